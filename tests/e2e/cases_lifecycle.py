"""The VM going away under live connections: QEMU SIGKILLed and restarted
against the same daemon, and a guest reboot inside a running QEMU."""
import hashlib
import os
import signal
import time

from cases_basic import seed_exchange_guest_to_host, seed_exchange_host_to_guest
from e2e_lib import (TestFailure, UnixListener, e2e_test, expect, hybrid_connect_retry, sha256_lines,
                     wait_closed)

MIB = 1 << 20


def everything_works(t, port):
    seed_exchange_guest_to_host(t)
    seed_exchange_host_to_guest(t)
    t.echo_both_ways(port, conns=4, size=MIB, seeds=(500, 600), timeout=120)


def open_live_connections(t, port):
    """One guest->host stream that never ends and one host->guest stream
    being written to; returns (listener, guest_to_host socket, host_to_guest socket)."""
    listener = UnixListener(t.uds, port)
    t.shell.start_job("flood", f"vsock_tool connect 2 {port} --send 64G --timeout 900", timeout=900)
    inbound = listener.accept(timeout=30)
    inbound.settimeout(30)
    received = 0
    while received < MIB:
        chunk = inbound.recv(65536)
        if not chunk:
            raise TestFailure(f"guest stream ended after {received} bytes")
        received += len(chunk)
    t.start_guest_listener("sink", f"vsock_tool listen {port + 1} --drain --timeout 900", timeout=900)
    outbound, _ = hybrid_connect_retry(t.uds, port + 1)
    outbound.setblocking(False)
    sent = 0
    deadline = time.monotonic() + 5
    while sent < MIB and time.monotonic() < deadline:
        try:
            sent += outbound.send(b"x" * 65536)
        except BlockingIOError:
            time.sleep(0.01)
    expect(sent > 0, "could not write to the host->guest connection")
    return listener, inbound, outbound


def expect_closed(sockets, timeout, why):
    details = []
    for name, sock in sockets:
        end, secs, _ = wait_closed(sock, timeout)
        sock.close()
        expect(end in ("eof", "reset"), f"{name} host socket not closed {timeout:.0f}s after {why} ({end})")
        details.append(f"{name} {end} in {secs:.2f}s")
    return ", ".join(details)


@e2e_test("lifecycle")
def qemu_sigkill_restart(t):
    listener, inbound, outbound = open_live_connections(t, 8001)
    try:
        t.vm.qemu.kill(signal.SIGKILL)
        closed = expect_closed([("guest->host", inbound), ("host->guest", outbound)], 15, "QEMU was killed")
    finally:
        listener.close()
    expect(t.vm.daemon.alive(), "the daemon exited when QEMU was killed")
    start = time.monotonic()
    t.vm.restart_qemu()
    boot = time.monotonic() - start
    everything_works(t, 8010)
    return f"{closed}; new QEMU booted in {boot:.1f}s and both directions work"


@e2e_test("lifecycle")
def guest_reboot(t):
    listener, inbound, outbound = open_live_connections(t, 8101)
    try:
        start = time.monotonic()
        t.vm.reboot_guest()
        boot = time.monotonic() - start
        closed = expect_closed([("guest->host", inbound), ("host->guest", outbound)], 15, "the guest rebooted")
    finally:
        listener.close()
    expect(t.vm.daemon.alive(), "the daemon exited during the guest reboot")
    everything_works(t, 8110)
    return f"rebooted in {boot:.1f}s; {closed}; both directions work after it"


@e2e_test("lifecycle")
def many_short_connections(t):
    """Connection churn (the agent pattern): 500 short echo connections in
    batches of 10, both directions."""
    path = f"{t.uds}_8201"
    host_echo = t.host_tool("ulisten", path, "--echo", "--conns", 500, "--quiet", "--timeout", 300)
    try:
        t.wait_path(path)
        result = t.guest("vsock_tool connect 2 8201 --conns 10 --repeat 50 --send 100 --recv 100 --timeout 300",
                         timeout=320)
        expect(result.status == 0, f"guest clients failed:\n{result.output}")
        t.finish_host(host_echo, "host echo server", timeout=30)
    finally:
        host_echo.kill()
    t.start_guest_listener("churn", "vsock_tool listen 8202 --echo --conns 500 --timeout 300", timeout=320)
    host = t.host_tool("uconnect", t.uds, "--hybrid", 8202, "--conns", 10, "--repeat", 50, "--send", 100,
                       "--recv", 100, "--timeout", 300)
    host_out = t.finish_host(host, "host clients", timeout=320)
    t.finish_guest_job("churn", "guest echo server", timeout=30)
    g = dict(kv.split("=") for kv in result.output.split() if "=" in kv)
    h = dict(kv.split("=") for kv in host_out.split() if "=" in kv)
    return f"guest->host {g.get('conn_rate')} conn/s, host->guest {h.get('conn_rate')} conn/s"


PAUSE_SIZE = 48 * MIB


@e2e_test("lifecycle")
def qmp_stop_cont_keeps_transfers(t):
    """QMP stop for 3 s in the middle of a transfer each way, then cont: both
    complete with the right sha256, and no connection is reset (QEMU sends
    GET_VRING_BASE on stop and restarts the rings from the same base on cont)."""
    log_start = os.path.getsize(t.vm.daemon.log_path)

    def daemon_log():
        with open(t.vm.daemon.log_path, encoding="utf-8", errors="replace") as f:
            f.seek(log_start)
            return f.read()

    t.start_guest_listener("h2g", f"vsock_tool listen 8202 --recv {PAUSE_SIZE} --seed 22 --expect-eof --sha256 "
                           "--timeout 300", timeout=330)
    host_sender = t.host_tool("uconnect", t.uds, "--hybrid", 8202, "--send", PAUSE_SIZE, "--seed", 22, "--sha256",
                              "--timeout", 300)
    listener = UnixListener(t.uds, 8201)
    try:
        t.shell.start_job("g2h", f"vsock_tool connect 2 8201 --send {PAUSE_SIZE} --seed 21 --timeout 300",
                          timeout=330)
        inbound = listener.accept(timeout=30)
        inbound.settimeout(60)
        digest = hashlib.sha256()
        received = 0

        def receive(until):
            nonlocal received
            while received < until:
                chunk = inbound.recv(min(65536, until - received))
                if not chunk:
                    raise TestFailure(f"guest->host stream ended after {received} of {PAUSE_SIZE} bytes")
                digest.update(chunk)
                received += len(chunk)

        receive(4 * MIB)
        expect(host_sender.proc.poll() is None, "the host->guest transfer ended before the pause; make it longer")
        t.vm.qemu.qmp("stop")
        paused_at = received
        time.sleep(3)
        log = daemon_log()
        expect("stopped" in log, "the daemon saw no ring stop on QMP stop")
        t.vm.qemu.qmp("cont")
        receive(PAUSE_SIZE)
        end, _, _ = wait_closed(inbound, 30)
        expect(end == "eof", f"guest->host stream did not end with EOF after all bytes ({end})")
        inbound.close()
        host_out = t.finish_host(host_sender, "host sender", timeout=300)
        guest_out = t.finish_guest_job("h2g", "guest receiver", timeout=300)
        t.finish_guest_job("g2h", "guest sender", timeout=300)
    finally:
        listener.close()
        host_sender.kill()
    want_g2h = t.expected_sha256(PAUSE_SIZE, 21)
    want_h2g = t.expected_sha256(PAUSE_SIZE, 22)
    expect(digest.hexdigest() == want_g2h, f"guest->host sha256 {digest.hexdigest()}, guest sent {want_g2h}")
    expect(sha256_lines(host_out)[0][0] == want_h2g, "host sent another pattern")
    expect(sha256_lines(guest_out)[0][1] == want_h2g, f"guest received sha256 {sha256_lines(guest_out)[0][1]}, "
           f"host sent {want_h2g}")
    log = daemon_log()
    expect("resumed" in log, "the daemon did not resume the rings on cont")
    expect("connection reset" not in log, "a connection was reset across stop/cont")
    return (f"paused 3 s after {paused_at >> 20} MiB guest->host; {PAUSE_SIZE >> 20} MiB each way after cont, "
            "sha256 match, no reset")
