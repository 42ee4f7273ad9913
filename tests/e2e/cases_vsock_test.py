"""The kernel's own tools/testing/vsock/vsock_test (from linux-source-6.1,
built into the guest by scripts/guest-image.sh as /bin/vsock_test).

Group vsock_test (run_e2e.py's VM_OPTIONS): two guests on one daemon, CID 3
and CID 4 in group g1, each with QEMU user networking for vsock_test's TCP
control channel, so a broken vsock cannot break the channel that reports it.
Guest to guest, every case runs in both guest kernels. Guest to host, the
cases run against our host peer (vsock_test_peer.py) over the hybrid AF_UNIX
convention, with the guest as client and as server; every SOCK_SEQPACKET
case must run, except those vsock_test_peer.NOT_RUN explains.
"""
import os
import re
import socket
import time

import vsock_test_peer as peer_lib
from e2e_lib import TestFailure, TestSkipped, e2e_test, expect, vmlib

SIBLING_CID = 4
SEQPACKET_CASES = {"SOCK_SEQPACKET msg bounds", "SOCK_SEQPACKET MSG_TRUNC flag", "SOCK_SEQPACKET timeout",
                   "SOCK_SEQPACKET invalid receive buffer"}  # every SEQPACKET case of 6.1
CONTROL_PORT = vmlib.GUEST_FORWARDED_TCP_PORT
GUEST_TIMEOUT = 180


def require_vsock_test(t):
    missing = os.path.join(t.vm.image_dir, "vsock_test.missing")
    if os.path.exists(missing):
        with open(missing, encoding="utf-8") as f:
            raise TestSkipped(f"the guest image has no vsock_test: {f.read().strip()}")


def list_cases(shell):
    """[(id, name)] from the guest's `vsock_test --list` (it exits with 1)."""
    out = shell.run("vsock_test --list", timeout=30).output
    cases = [(int(i), name) for i, name in re.findall(r"^(\d+)\t(.+?)\s*$", out, re.M)]
    expect(cases, f"vsock_test --list printed no cases:\n{out}")
    return cases


def case_results(output):
    """{id: 'ok' | 'skipped'} from vsock_test's '<id> - <name>...ok' lines."""
    results = {int(i): status for i, status in re.findall(r"^(\d+) - .*?\.\.\.(ok|skipped)$", output, re.M)}
    expect("All tests have been executed. Waiting other peer...ok" in output,
           f"vsock_test did not pass its final COMPLETED barrier:\n{output}")
    return results


def start_guest_server(shell, name, peer_cid, skips=()):
    """vsock_test --mode=server in the guest as a job, its control port on
    CONTROL_PORT; returns once it listens."""
    args = "".join(f" --skip={i}" for i in skips)
    shell.start_job(name, f"vsock_test --mode=server --control-port={CONTROL_PORT} --peer-cid={peer_cid}{args}",
                    timeout=GUEST_TIMEOUT)
    if not shell.wait_job_output(name, "Control socket listening", timeout=30):
        raise TestFailure(f"vsock_test server did not listen:\n{shell.wait_job(name, timeout=10).output}")


def guest_pair(t, client_cid, server_cid):
    """vsock_test --mode=server in guest server_cid, --mode=client
    --peer-cid=server_cid in guest client_cid (sibling routing through the
    daemon): every case is 'ok' on both sides, and both exit 0."""
    require_vsock_test(t)
    qemus = {3: t.vm.qemu, SIBLING_CID: t.vm.sibling_qemus[SIBLING_CID]}
    client_shell, server = qemus[client_cid].shell, qemus[server_cid]
    cases = list_cases(client_shell)
    expect(SEQPACKET_CASES <= {name for _, name in cases}, f"vsock_test lacks SEQPACKET cases: {cases}")
    start_guest_server(server.shell, "vt_server", peer_cid=client_cid)
    start = time.monotonic()
    client = client_shell.run(f"vsock_test --mode=client --control-host=10.0.2.2 "
                              f"--control-port={server.forward_port} --peer-cid={server_cid}", timeout=GUEST_TIMEOUT)
    seconds = time.monotonic() - start
    served = server.shell.wait_job("vt_server", timeout=60)
    expect(client.status == 0, f"vsock_test client (guest {client_cid}) exited {client.status}:\n{client.output}\n"
           f"--- server (guest {server_cid}):\n{served.output}")
    expect(served.status == 0, f"vsock_test server (guest {server_cid}) exited {served.status}:\n{served.output}")
    for side, output in (("client", client.output), ("server", served.output)):
        results = case_results(output)
        not_ok = {i: results.get(i, "missing") for i, _ in cases if results.get(i) != "ok"}
        expect(not not_ok, f"{side}: cases not ok: {not_ok}\n{output}")
    return f"all {len(cases)} cases ok on both guests in {seconds:.1f}s"


@e2e_test("vsock_test")
def vsock_test_guest_to_guest_all_cases(t):
    """Guest 3 is the client (--peer-cid=4), guest 4 the server."""
    return guest_pair(t, client_cid=3, server_cid=SIBLING_CID)


@e2e_test("vsock_test")
def vsock_test_guest_to_guest_reversed(t):
    """Guest 4 is the client (--peer-cid=3), guest 3 the server."""
    return guest_pair(t, client_cid=SIBLING_CID, server_cid=3)


def host_control_listener():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    return listener


def run_against_host(t, guest_mode):
    """vsock_test in the guest (guest_mode) against vsock_test_peer on the
    host; returns a PASS detail after checking both sides' results."""
    require_vsock_test(t)
    cases = list_cases(t.shell)
    expect(SEQPACKET_CASES <= {name for _, name in cases}, f"vsock_test lacks SEQPACKET cases: {cases}")
    skipped = {i: peer_lib.skip_reason(name, guest_mode) for i, name in cases}
    skipped = {i: why for i, why in skipped.items() if why}
    skips = "".join(f" --skip={i}" for i in sorted(skipped))
    start = time.monotonic()
    if guest_mode == "client":
        listener = host_control_listener()
        try:
            t.shell.start_job("vt", f"vsock_test --mode=client --control-host=10.0.2.2 "
                              f"--control-port={listener.getsockname()[1]} --peer-cid=2{skips}", timeout=GUEST_TIMEOUT)
            listener.settimeout(30)
            control, _ = listener.accept()
        finally:
            listener.close()
    else:
        start_guest_server(t.shell, "vt", peer_cid=2, skips=sorted(skipped))
        control = socket.create_connection(("127.0.0.1", t.vm.qemu.forward_port), timeout=30)
    peer_error = None
    with control:
        try:
            host = peer_lib.run_cases(peer_lib.HostPeer(t.uds, peer_lib.Control(control)), cases, guest_mode)
        except (peer_lib.PeerFailure, OSError) as e:
            peer_error, host = e, {}
    guest = t.shell.wait_job("vt", timeout=60)
    seconds = time.monotonic() - start
    expect(peer_error is None, f"host peer: {peer_error}\n--- guest vsock_test:\n{guest.output}")
    expect(guest.status == 0, f"guest vsock_test --mode={guest_mode} exited {guest.status}:\n{guest.output}")
    results = case_results(guest.output)
    for i, name in cases:
        want = "skipped" if i in skipped else "ok"
        expect(results.get(i) == want and host.get(i) == want,
               f"case {i} ({name}): guest {results.get(i)}, host {host.get(i)}, want {want}\n{guest.output}")
    ran = [name for i, name in cases if i not in skipped]
    expect(SEQPACKET_CASES - set(ran) == {n for (n, m) in peer_lib.NOT_RUN if m == guest_mode},
           f"SEQPACKET cases not run: {SEQPACKET_CASES - set(ran)}")
    names = dict(cases)
    for i in sorted(skipped):
        print(f"    SKIPPED case {i} ({names[i]}) with the guest as {guest_mode}: {skipped[i]}", flush=True)
    return f"{len(ran)} of {len(cases)} cases ok on both sides in {seconds:.1f}s, {len(skipped)} skipped"


@e2e_test("vsock_test")
def vsock_test_guest_client_host_server(t):
    """The guest's vsock_test --mode=client --peer-cid=2: its connects reach
    our host peer's AF_UNIX listener at <uds>_1234 (SOCK_SEQPACKET or
    SOCK_STREAM), which plays each case's server half."""
    return run_against_host(t, "client")


@e2e_test("vsock_test")
def vsock_test_guest_server_host_client(t):
    """The guest's vsock_test --mode=server: our host peer connects through
    <uds>_seqpacket or <uds> (CONNECT 1234) and plays each case's client half."""
    return run_against_host(t, "server")
