"""Sibling VMs: two real guests on one daemon (run_e2e.py's VM_OPTIONS: CID 3
in group g1, CID 4 in g1+g2, CID 5 configured in g2 without a guest). Guest
programs connect to each other's CID through the daemon; a CID out of reach is
refused at once."""
import signal
import time

from e2e_lib import TestFailure, e2e_test, expect, parse_fields, sha256_lines

SIZE = 4 << 20


def sibling_shell(t, cid=4):
    qemu = t.vm.sibling_qemus.get(cid)
    if qemu is None:
        raise TestFailure(f"no sibling guest with CID {cid} in this boot")
    return qemu.shell


@e2e_test("sibling")
def sibling_stream_sha256_both_ways(t):
    """Guest 3 connects to guest 4; each sends 4 MiB of its own pattern and
    checks the other's, both print sha256 of what they sent and received."""
    b = sibling_shell(t)
    b.start_job("listen", f"vsock_tool listen 7100 --send {SIZE} --seed 41 --recv {SIZE} --recv-seed 31 --sha256 "
                "--timeout 240", timeout=270)
    if not b.wait_job_output("listen", "vsock_tool: listening", timeout=30):
        raise TestFailure(f"guest 4's listener did not start:\n{b.wait_job('listen', timeout=10).output}")
    result = t.guest(f"vsock_tool connect 4 7100 --send {SIZE} --seed 31 --recv {SIZE} --recv-seed 41 --sha256 "
                     "--timeout 240", timeout=270)
    expect(result.status == 0, f"guest 3 -> guest 4 failed:\n{result.output}")
    listener = b.wait_job("listen", timeout=60)
    expect(listener.status == 0, f"guest 4's listener failed:\n{listener.output}")
    from_3 = t.expected_sha256(SIZE, 31)
    from_4 = t.expected_sha256(SIZE, 41)
    client = sha256_lines(result.output)
    server = sha256_lines(listener.output)
    expect(client.get(0) == (from_3, from_4), f"guest 3's sha256 {client.get(0)} != ({from_3}, {from_4})")
    expect(server.get(0) == (from_4, from_3), f"guest 4's sha256 {server.get(0)} != ({from_4}, {from_3})")
    fields = parse_fields(result.output)
    return f"4 MiB each way, sha256 match; {fields.get('tx_mibps')} / {fields.get('rx_mibps')} MiB/s"


@e2e_test("sibling")
def sibling_out_of_reach_refused_at_once(t):
    """CID 5 shares no group with CID 3, and CID 9 is no VM: the connect gets
    ECONNRESET at once (vhost-device-vsock drops it: the guest times out)."""
    times = []
    for cid in (5, 9, 5):
        result = t.guest(f"vsock_tool connect {cid} 7200 --expect-error ECONNRESET", timeout=30)
        expect(result.status == 0, f"connect to CID {cid}: {result.output.strip()} (want ECONNRESET)")
        times.append(float(parse_fields(result.output, "connect_error")["seconds"]))
    expect(max(times) < 1.0, f"refused connect took {max(times):.3f}s, want < 1s")
    log = open(t.vm.daemon.log_path, errors="replace").read()
    expect("cid=3 packet to cid=5 refused (no shared group)" in log, "no log line naming both CIDs")
    return f"ECONNRESET after {', '.join(f'{s * 1000:.1f}' for s in times)} ms"


@e2e_test("sibling")
def sibling_qemu_killed_resets_its_peers(t):
    """Guest 3 streams to guest 4; guest 4's QEMU is SIGKILLed. Guest 3's
    connection must end with a reset at once (not hang), guest 3 must keep
    serving the host, and a new QEMU for CID 4 is reachable again. Runs last in
    the group: it restarts guest 4."""
    b = sibling_shell(t)
    b.start_job("sink", "vsock_tool listen 7300 --recv 1073741824 --timeout 200", timeout=220)
    if not b.wait_job_output("sink", "vsock_tool: listening", timeout=30):
        raise TestFailure(f"guest 4's listener did not start:\n{b.wait_job('sink', timeout=10).output}")
    t.shell.start_job("source", "vsock_tool connect 4 7300 --send 1073741824 --timeout 200", timeout=220)
    time.sleep(2)  # the stream is moving
    sibling = t.vm.sibling_qemus[4]
    killed_at = time.monotonic()
    sibling.kill(signal.SIGKILL)
    source = t.shell.wait_job("source", timeout=30)
    ended = time.monotonic() - killed_at
    # Linux reports the RST to a writer as EPIPE (peer shut down) or ECONNRESET.
    expect(source.status != 0 and ("ECONNRESET" in source.output or "EPIPE" in source.output),
           f"guest 3's stream did not end with a reset (status {source.status}):\n{source.output}")
    expect(ended < 10, f"guest 3's stream ended {ended:.1f}s after the kill, want < 10s")
    expect(t.vm.daemon.alive(), "the daemon exited when a sibling's QEMU was killed")
    log = open(t.vm.daemon.log_path, errors="replace").read()
    expect("sibling cid=4 went away" in log, "no log line for the sibling's departure")
    t.echo_both_ways(7310, conns=2, size=256 << 10, seeds=(71, 72), timeout=120)  # guest 3 still serves the host
    sibling.start()
    b = sibling_shell(t)
    b.start_job("again", "vsock_tool listen 7320 --recv 65536 --recv-seed 73 --timeout 60", timeout=80)
    if not b.wait_job_output("again", "vsock_tool: listening", timeout=30):
        raise TestFailure(f"the new guest 4's listener did not start:\n{b.wait_job('again', timeout=10).output}")
    result = t.guest("vsock_tool connect 4 7320 --send 65536 --seed 73 --timeout 60", timeout=80)
    expect(result.status == 0, f"guest 3 -> the new guest 4 failed:\n{result.output}")
    expect(b.wait_job("again", timeout=30).status == 0, "the new guest 4 did not receive the 64 KiB intact")
    error = "ECONNRESET" if "ECONNRESET" in source.output else "EPIPE"
    return f"{error} {ended:.2f}s after the kill; guest 3 kept serving the host; the new guest 4 is reachable"
