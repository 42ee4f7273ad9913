"""AF_VSOCK forwarding (--forward-cid / --forward-listen), tested where a real
AF_VSOCK stack may be used: inside the guest, never on the test host. The
guest gets our daemon and vuv_sim_guest (the guest-driver simulator as a
program) in an extra initramfs built at test time; it loads vsock_loopback
(CID 1), runs the daemon with forward-cid=1 and a forward-listen port, and
the simulated guest talks through it to socat over the guest's loopback:

  sim guest --virtio--> daemon --AF_VSOCK (1, P)--> socat VSOCK-LISTEN:P     (forward-cid)
  socat VSOCK-CONNECT:1:P --AF_VSOCK--> daemon listener --virtio--> sim guest port P   (forward-listen)
"""
import os
import re
import shutil
import subprocess
import tempfile

from e2e_lib import TestFailure, TestSkipped, e2e_test, expect

ECHO_PORT = 5101      # socat echo server in the guest, reached through forward-cid
LISTEN_PORT = 5102    # the daemon's forward-listen port; the sim guest listens there
NOBODY_PORT = 5199    # nothing listens: the sim guest must get an RST
SOCKET = "/tmp/fw/vhost.sock"
HERE = os.path.dirname(os.path.abspath(__file__))


def _libraries(binary):
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    return sorted(set(re.findall(r"(/[^ ]+\.so[^ ]*)", out)))


def extra_initramfs(daemon, workdir):
    """Builds <workdir>/forward.cpio.gz: the daemon and vuv_sim_guest (both
    stripped) with every shared library ldd names. Linux unpacks it on top of
    the cached image when the two archives are concatenated."""
    sim = os.path.join(os.path.dirname(daemon), "vuv_sim_guest")
    if not os.access(sim, os.X_OK):
        raise TestSkipped(f"{sim} not built (ninja -C build vuv_sim_guest)")
    for tool in ("ldd", "strip"):
        if shutil.which(tool) is None:
            raise TestSkipped(f"'{tool}' not found on the host")
    stage = tempfile.mkdtemp(prefix="fwstage", dir=workdir)
    os.makedirs(os.path.join(stage, "usr/bin"))
    for binary, name in ((daemon, "vhost-user-vsock"), (sim, "vuv_sim_guest")):
        target = os.path.join(stage, "usr/bin", name)
        subprocess.run(["strip", "-o", target, binary], check=True)
        for lib in _libraries(binary):
            dest = stage + lib
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copy(os.path.realpath(lib), dest)
    out = os.path.join(workdir, "forward.cpio.gz")
    subprocess.run(["python3", os.path.join(HERE, "image", "mkinitramfs.py"), stage, out], check=True,
                   stdout=subprocess.DEVNULL)
    shutil.rmtree(stage, ignore_errors=True)
    return out


def setup_guest(t):
    """Loads vsock_loopback (listed by guest-image.sh in /etc/modules.loopback)
    and checks it is live; starts our daemon in the guest with forward-cid=1,
    forward-listen=LISTEN_PORT under --seccomp."""
    result = t.guest("[ -d /sys/module/vsock_loopback ] || while read -r m; do insmod /lib/modules/$m || exit 1;"
                     " done </etc/modules.loopback; [ -d /sys/module/vsock_loopback ] && echo loopback=loaded;"
                     " command -v vhost-user-vsock vuv_sim_guest socat", timeout=30)
    if "loopback=loaded" not in result.output:
        raise TestFailure(f"vsock_loopback did not load in the guest:\n{result.output}")
    t.shell.start_job("fwdaemon", f"mkdir -p /tmp/fw; exec vhost-user-vsock --guest-cid 3 --socket {SOCKET} "
                      f"--forward-cid 1 --forward-listen {LISTEN_PORT} --seccomp", timeout=600)
    if not t.shell.wait_job_output("fwdaemon", "ready", timeout=30):
        raise TestFailure(f"the daemon in the guest did not start:\n{t.shell.wait_job('fwdaemon', timeout=10).output}")


def daemon_log(t):
    return t.guest("cat /tmp/job.fwdaemon.out", timeout=20).output


def check_daemon_alive(t):
    alive = t.guest("[ ! -f /tmp/job.fwdaemon.rc ] && echo alive", timeout=20).output
    expect("alive" in alive, f"the daemon in the guest died:\n{daemon_log(t)}")


@e2e_test("forward")
def forward_cid_guest_connect_round_trip(t):
    """(a) sim guest -> CID 2 port P -> daemon AF_VSOCK-connects (1, P) -> an
    in-guest socat echo server; the bytes come back unchanged."""
    setup_guest(t)
    t.shell.start_job("echo", f"socat VSOCK-LISTEN:{ECHO_PORT},fork PIPE", timeout=300)
    up = t.guest(f"for i in $(seq 100); do socat -u /dev/null VSOCK-CONNECT:1:{ECHO_PORT} 2>/dev/null && exit 0;"
                 " sleep 0.1; done; exit 1", timeout=30)
    expect(up.status == 0, f"the guest's socat echo server did not come up:\n{up.output}")
    text = "hello-through-forward-cid-0123456789"
    result = t.guest(f"vuv_sim_guest {SOCKET} connect-echo:{ECHO_PORT}:{text}", timeout=60)
    expect(result.status == 0, f"sim guest failed (status {result.status}):\n{result.output}\n{daemon_log(t)}")
    expect(f"connect-echo:{ECHO_PORT}:{text} ok" in result.output, f"no ok line:\n{result.output}")
    check_daemon_alive(t)
    log = daemon_log(t)
    # "(forwarded)": logged when an AF_VSOCK connect in progress completed (the connecting state).
    expect("guest connection established (forwarded)" in log, f"no forwarded connection in the daemon log:\n{log}")
    expect("seccomp filter installed" in log, f"the daemon did not run under --seccomp:\n{log}")
    return f"{len(text)} bytes round-tripped through AF_VSOCK (1, {ECHO_PORT})"


@e2e_test("forward")
def forward_cid_no_listener_is_rst(t):
    """(b) A connect to a port nothing listens on: the host connect fails and
    the sim guest gets an RST (not a timeout), with one log line."""
    setup_guest(t)
    result = t.guest(f"vuv_sim_guest {SOCKET} connect-refused:{NOBODY_PORT}", timeout=60)
    expect(result.status == 0, f"sim guest failed (status {result.status}):\n{result.output}\n{daemon_log(t)}")
    check_daemon_alive(t)
    log = daemon_log(t)
    refusal = re.search(rf"guest connect refused: port {NOBODY_PORT}: connect: (.*)", log)
    expect(refusal is not None, f"no refusal line in the daemon log:\n{log}")
    rst = re.search(r"RST after (\d+) ms", result.output)
    expect(rst is not None and int(rst.group(1)) < 1000, f"RST too late or missing:\n{result.output}")
    return f"RST after {rst.group(1)} ms; daemon: connect: {refusal.group(1).strip()}"


@e2e_test("forward")
def forward_listen_host_connect_reaches_sim_guest(t):
    """(c) An in-guest socat VSOCK-CONNECT:1:P reaches the daemon's
    forward-listen port P, which becomes a connection to the sim guest's port
    P; bytes go there and back."""
    setup_guest(t)
    text = "hello-through-forward-listen-9876543210"
    t.shell.start_job("sim", f"vuv_sim_guest {SOCKET} accept-echo:{LISTEN_PORT}:{text}", timeout=120)
    if not t.shell.wait_job_output("sim", f"listening {LISTEN_PORT}", timeout=30):
        raise TestFailure(f"sim guest did not listen:\n{t.shell.wait_job('sim', timeout=10).output}")
    result = t.guest(f"printf '%s' '{text}' | socat -t 5 - VSOCK-CONNECT:1:{LISTEN_PORT}", timeout=60)
    expect(result.output.strip() == text, f"socat got {result.output.strip()!r}, want {text!r}\n{daemon_log(t)}")
    sim = t.shell.wait_job("sim", timeout=60)
    expect(sim.status == 0, f"sim guest failed (status {sim.status}):\n{sim.output}\n{daemon_log(t)}")
    check_daemon_alive(t)
    return f"{len(text)} bytes each way through the forward-listen port {LISTEN_PORT}"
