#!/usr/bin/env python3
"""Boots the e2e guest under QEMU with vhost-user-vsock as its vsock device.

Used as a library by tests/e2e and scripts/demo.sh, and from the command line:

  scripts/vm.py shell              boot, then type commands; each runs in the guest
  scripts/vm.py shell --console    boot with the guest's console on this terminal (Ctrl-A X quits)
  scripts/vm.py run 'CMD'          boot, run CMD in the guest, print its output, exit with its status

Environment: VUV_DAEMON (daemon binary, default build/vhost-user-vsock),
VUV_GUEST_IMAGE (image directory; default: what scripts/guest-image.sh
prints), VUV_ACCEL=tcg|kvm, VUV_KEEP=1 (keep the temporary directory),
VUV_DAEMON_EXTRA_ARGS (more daemon arguments, shell-quoted, e.g. "--seccomp"),
VUV_PACKED=1 (the guest's device gets packed=on: VIRTIO_F_RING_PACKED).

Only the standard library is used. Every process started here is recorded
and killed by its PID, never by name.
"""
import argparse
import atexit
import base64
import ctypes
import json
import os
import selectors
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUEST_CID = 3
HOST_CID = 2
# With user_net, the guest is 10.0.2.15 behind QEMU's user networking, reaches
# the host's 127.0.0.1 at 10.0.2.2, and the host reaches this guest TCP port
# at 127.0.0.1:<Qemu.forward_port> (a free port chosen per QEMU start).
GUEST_FORWARDED_TCP_PORT = 5000

_started = []  # every Popen we own, so cleanup() can kill them by PID


class VmError(Exception):
    pass


def _die_with_parent():
    # Runs in the child before exec: if this runner dies (even by SIGKILL,
    # e.g. a ctest timeout), the kernel kills the daemon, QEMU and host tools.
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(args, **kwargs):
    """Popen that is remembered for cleanup()."""
    proc = subprocess.Popen(args, preexec_fn=_die_with_parent, **kwargs)
    _started.append(proc)
    return proc


def kill_process(proc, sig=signal.SIGKILL, wait=10.0):
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


@atexit.register
def cleanup():
    while _started:
        kill_process(_started.pop(), signal.SIGKILL, wait=5)


def _exit_on_sigterm(signum, frame):
    sys.exit(128 + signum)  # runs cleanup() through atexit


signal.signal(signal.SIGTERM, _exit_on_sigterm)


def choose_accel():
    forced = os.environ.get("VUV_ACCEL", "")
    if forced in ("tcg", "kvm"):
        return forced
    if forced:
        raise VmError(f"VUV_ACCEL must be tcg or kvm, not {forced!r}")
    # /dev/kvm alone is not enough: kvm_pvm provides it but cannot boot a stock kernel.
    if os.path.exists("/sys/module/kvm_intel") or os.path.exists("/sys/module/kvm_amd"):
        return "kvm"
    return "tcg"


def guest_image_dir():
    env = os.environ.get("VUV_GUEST_IMAGE")
    if env:
        return env
    proc = subprocess.run(["bash", os.path.join(REPO, "scripts", "guest-image.sh")], stdout=subprocess.PIPE,
                          check=False)
    lines = proc.stdout.decode().strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise VmError("scripts/guest-image.sh failed")
    return lines[-1]


def packed_ring():
    """VUV_PACKED=1: QEMU offers the guest packed virtqueues (packed=on)."""
    return os.environ.get("VUV_PACKED") == "1"


def default_daemon():
    return os.environ.get("VUV_DAEMON") or os.path.join(REPO, "build", "vhost-user-vsock")


def tail(path, lines=80):
    try:
        with open(path, "rb") as f:
            data = f.read().decode(errors="replace").splitlines()
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    return "\n".join(data[-lines:])


def wait_for_socket(path, proc, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                return
        except FileNotFoundError:
            pass
        if proc is not None and proc.poll() is not None:
            raise VmError(f"{what} exited with status {proc.returncode} before creating {path}")
        time.sleep(0.02)
    raise VmError(f"{what} did not create {path} within {timeout:.0f}s")


class Daemon:
    """One vhost-user-vsock process serving one VM."""

    def __init__(self, binary, workdir, cid=GUEST_CID, extra_args=(), groups="default", siblings=()):
        self.binary = binary
        self.cid = cid
        self.workdir = workdir
        self.socket = os.path.join(workdir, "vhost.sock")
        self.uds_path = os.path.join(workdir, "vsock")
        # Sibling VMs of the same daemon: [(cid, groups)]; then every VM is a --vm.
        self.groups = groups
        self.siblings = list(siblings)
        self.log_path = os.path.join(workdir, "daemon.log")
        self.extra_args = list(extra_args) + shlex.split(os.environ.get("VUV_DAEMON_EXTRA_ARGS", ""))
        self.proc = None

    def start(self, timeout=10.0):
        if not os.access(self.binary, os.X_OK):
            raise VmError(f"daemon binary {self.binary} not found; build it: ninja -C build vhost-user-vsock")
        args = [self.binary, "--guest-cid", str(self.cid), "--socket", self.socket, "--uds-path", self.uds_path]
        if self.siblings:
            args = [self.binary, "--vm", f"guest-cid={self.cid},socket={self.socket},uds-path={self.uds_path},"
                    f"groups={self.groups}"]
            for cid, groups in self.siblings:
                args += ["--vm", f"guest-cid={cid},socket={self.sibling_socket(cid)},"
                         f"uds-path={os.path.join(self.workdir, f'vsock{cid}')},groups={groups}"]
        args += self.extra_args
        with open(self.log_path, "ab") as log:
            log.write(("$ " + " ".join(args) + "\n").encode())
            log.flush()
            self.proc = spawn(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        wait_for_socket(self.socket, self.proc, timeout, "the daemon")
        for cid, _ in self.siblings:
            wait_for_socket(self.sibling_socket(cid), self.proc, timeout, "the daemon")

    def sibling_socket(self, cid):
        return os.path.join(self.workdir, f"vhost{cid}.sock")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def memory_kib(self):
        """Returns VmRSS, VmHWM, RssAnon, RssFile and RssShmem (KiB) from /proc/PID/status."""
        result = {}
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                    result[key] = int(value.split()[0])
        return result

    def stop(self):
        if self.proc is not None:
            kill_process(self.proc, signal.SIGTERM, wait=10)
            if self.proc in _started:
                _started.remove(self.proc)


class CommandResult:
    def __init__(self, status, output):
        self.status = status
        self.output = output

    def __repr__(self):
        return f"CommandResult(status={self.status}, output={self.output!r})"


class GuestShell:
    """The command channel on the guest's second serial port (see tests/e2e/guest/init)."""

    def __init__(self, path, transcript_path):
        self.path = path
        self.sock = None
        self.buf = b""
        self.next_id = 1
        self.transcript = open(transcript_path, "ab")

    def connect(self, qemu_proc, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            wait_for_socket(self.path, qemu_proc, deadline - time.monotonic(), "QEMU")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.path)
                break
            except (ConnectionRefusedError, FileNotFoundError):
                sock.close()
                if time.monotonic() >= deadline:
                    raise VmError(f"cannot connect to the guest command channel {self.path}") from None
                time.sleep(0.05)
        self.sock = sock
        self.sock.setblocking(False)

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.buf = b""

    def _send(self, data):
        self.sock.setblocking(True)
        try:
            self.sock.sendall(data)
        finally:
            self.sock.setblocking(False)

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        with selectors.DefaultSelector() as sel:
            sel.register(self.sock, selectors.EVENT_READ)
            if not sel.select(min(left, 0.5)):
                return False
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return False
        if not data:
            raise VmError("the guest command channel closed (did QEMU exit?)")
        self.transcript.write(data)
        self.transcript.flush()
        self.buf += data
        return True

    def _line(self, deadline):
        while b"\n" not in self.buf:
            self._fill(deadline)
        line, _, self.buf = self.buf.partition(b"\n")
        return line.rstrip(b"\r").decode(errors="replace")

    def wait_ready(self, timeout=60.0, previous_boot=None):
        """Waits until init serves commands (from a boot other than
        previous_boot); returns (boot id, vsock status)."""
        deadline = time.monotonic() + timeout
        nonce = f"n{time.monotonic_ns()}"
        next_ping = 0.0
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise VmError(f"guest not ready within {timeout:.0f}s")
            if now >= next_ping:
                self._send(f"PING {nonce}\n".encode())
                next_ping = now + 0.5
            while b"\n" in self.buf:
                words = self._line(deadline).split()
                if len(words) == 4 and words[0] == "@@READY" and words[3] == nonce and words[1] != previous_boot:
                    return words[1], words[2]
            try:
                self._fill(min(deadline, next_ping))
            except TimeoutError:
                pass

    def run(self, script, timeout=60, check=False):
        """Runs a sh script in the guest; returns CommandResult. The guest
        kills the script after `timeout` seconds (status 137)."""
        cmd_id = self.next_id
        self.next_id += 1
        encoded = base64.b64encode(script.encode()).decode()
        self._send(f"RUN {cmd_id} {max(1, int(timeout))} {encoded}\n".encode())
        deadline = time.monotonic() + timeout + 20
        try:
            while self._line(deadline) != f"@@BEGIN {cmd_id}":
                pass
            marker = f"\n@@END {cmd_id} ".encode()
            while True:
                pos = self.buf.find(marker)
                if pos >= 0 and b"\n" in self.buf[pos + len(marker):]:
                    break
                self._fill(deadline)
        except TimeoutError:
            raise VmError(f"guest command {cmd_id} gave no answer within {timeout + 20:.0f}s: {script[:200]!r}") \
                from None
        output = self.buf[:pos].decode(errors="replace")
        rest = self.buf[pos + len(marker):]
        status_text, _, self.buf = rest.partition(b"\n")
        result = CommandResult(int(status_text), output)
        if check and result.status != 0:
            raise VmError(f"guest command failed with status {result.status}: {script[:200]!r}\n{output}")
        return result

    def start_job(self, name, script, timeout=300):
        """Starts a script in the background in the guest, in its own session
        so kill_jobs() can end it and its children; see wait_job()."""
        encoded = base64.b64encode(script.encode()).decode()
        job = f"/tmp/job.{name}"
        self.run(
            f"rm -f {job}.out {job}.rc; echo {encoded} | base64 -d > {job}.sh\n"
            f"setsid sh -c 'timeout -s KILL {int(timeout)} sh {job}.sh > {job}.out 2>&1; echo $? > {job}.rc.tmp;"
            f" mv {job}.rc.tmp {job}.rc' </dev/null >/dev/null 2>&1 &\n"
            f"echo $! > {job}.pid\n",
            timeout=10, check=True)

    def wait_job(self, name, timeout=300):
        """Waits for a job; returns its output and exit status (137: killed by its timeout)."""
        job = f"/tmp/job.{name}"
        return self.run(f"while [ ! -f {job}.rc ]; do sleep 0.05; done; rm -f {job}.pid; cat {job}.out;"
                        f" exit $(cat {job}.rc)", timeout=timeout)

    def kill_jobs(self):
        """Ends every job still running (a failed test may leave some)."""
        return self.run("for f in /tmp/job.*.pid; do [ -f \"$f\" ] || continue; j=${f%.pid};"
                        " [ -f $j.rc ] || kill -9 -- -$(cat $f) 2>/dev/null; rm -f $f; done; true", timeout=20)

    def wait_job_output(self, name, text, timeout=30):
        """Waits until a running job printed `text` (e.g. a 'listening' line)."""
        job = f"/tmp/job.{name}"
        return self.run(f"while ! grep -q '{text}' {job}.out 2>/dev/null; do [ -f {job}.rc ] && exit 1;"
                        f" sleep 0.05; done", timeout=timeout).status == 0


class Qemu:
    """One QEMU process; a VM may start several in turn against one daemon."""

    def __init__(self, image_dir, workdir, vhost_socket, memory_mib=256, accel=None, console_on_stdio=False,
                 user_net=False, extra_initrd=None):
        self.image_dir = image_dir
        self.extra_initrd = extra_initrd  # a cpio.gz unpacked on top of the image's (Linux takes concatenated archives)
        self.user_net = user_net
        self.forward_port = None
        self.workdir = workdir
        self.vhost_socket = vhost_socket
        self.memory_mib = memory_mib
        self.accel = accel or choose_accel()
        self.console_on_stdio = console_on_stdio
        self.generation = 0
        self.proc = None
        self.shell = None

    def paths(self):
        g = self.generation
        w = self.workdir
        return (os.path.join(w, f"qemu{g}.log"), os.path.join(w, f"console{g}.log"), os.path.join(w, f"cmd{g}.sock"),
                os.path.join(w, f"transcript{g}.log"))

    def qmp_path(self):
        return os.path.join(self.workdir, f"qmp{self.generation}.sock")

    def qmp(self, command, timeout=10.0):
        """Runs one QMP command (e.g. "stop", "cont") and returns its "return"
        value; raises VmError on an error reply or no reply."""
        deadline = time.monotonic() + timeout
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(self.qmp_path())
            stream = sock.makefile("rwb")

            def reply():
                while time.monotonic() < deadline:
                    line = stream.readline()
                    if not line:
                        break
                    message = json.loads(line)
                    if "return" in message:
                        return message["return"]
                    if "error" in message:
                        raise VmError(f"QMP {command}: {message['error']}")
                raise VmError(f"QMP {command}: no reply within {timeout:.0f}s")

            stream.readline()  # the greeting
            for execute in ("qmp_capabilities", command):
                stream.write(json.dumps({"execute": execute}).encode() + b"\n")
                stream.flush()
                result = reply()
            return result

    def command_line(self):
        log, console, cmd_sock, _ = self.paths()
        mem = f"{self.memory_mib}M"
        accel = ["-accel", "kvm", "-cpu", "host"] if self.accel == "kvm" else ["-accel", "tcg", "-cpu", "max"]
        return ["qemu-system-x86_64", "-machine", "q35", *accel, "-smp", "1", "-m", mem,
                "-object", f"memory-backend-memfd,id=mem,size={mem},share=on", "-numa", "node,memdev=mem",
                "-chardev", f"socket,id=vsock0,path={self.vhost_socket}",
                "-device", "vhost-user-vsock-pci,chardev=vsock0" + (",packed=on" if packed_ring() else ""),
                "-kernel", os.path.join(self.image_dir, "vmlinux"),
                "-initrd", self.initrd(),
                "-append", "console=ttyS0 loglevel=4",
                "-nodefaults", "-no-user-config", "-display", "none",
                "-serial", "mon:stdio" if self.console_on_stdio else f"file:{console}",
                "-chardev", f"socket,id=cmd,path={cmd_sock},server=on,wait=off", "-serial", "chardev:cmd",
                "-qmp", f"unix:{self.qmp_path()},server=on,wait=off", *self.network_args()]

    def initrd(self):
        base = os.path.join(self.image_dir, "initramfs.cpio.gz")
        if not self.extra_initrd:
            return base
        combined = os.path.join(self.workdir, "initrd-combined.cpio.gz")
        if not os.path.exists(combined):
            with open(combined, "wb") as out:
                for part in (base, self.extra_initrd):
                    with open(part, "rb") as f:
                        shutil.copyfileobj(f, out)
        return combined

    def network_args(self):
        """QEMU user networking with one forward to GUEST_FORWARDED_TCP_PORT
        (virtio-net without its boot ROM: the kernel is booted directly)."""
        if not self.user_net:
            return []
        if self.forward_port is None:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind(("127.0.0.1", 0))
                self.forward_port = probe.getsockname()[1]
        forward = f"tcp:127.0.0.1:{self.forward_port}-:{GUEST_FORWARDED_TCP_PORT}"
        return ["-netdev", f"user,id=net0,hostfwd={forward}", "-device", "virtio-net-pci,netdev=net0,romfile="]

    def start(self, ready_timeout=120.0):
        # The forwarded port is probed free and then bound by QEMU: another
        # process may take it in between. QEMU then exits at once; retry with
        # a new port instead of failing the test.
        for attempt in range(3):
            try:
                return self.start_once(ready_timeout)
            except (VmError, OSError):  # QEMU's exit may also reset the command channel
                if attempt == 2 or not self.forward_port_was_taken():
                    raise
                print(f"vm: port {self.forward_port} was taken before QEMU bound it; retrying with another",
                      file=sys.stderr)
                self.kill()
                self.forward_port = None
        raise AssertionError("unreachable")

    def forward_port_was_taken(self):
        if not self.user_net or self.proc is None:
            return False
        try:
            self.proc.wait(timeout=5)  # the channel may reset just before QEMU is gone
        except subprocess.TimeoutExpired:
            return False
        with open(self.paths()[0], "rb") as f:
            return b"Could not set up host forwarding rule" in f.read()

    def start_once(self, ready_timeout):
        self.generation += 1
        log, _, cmd_sock, transcript = self.paths()
        for stale in (cmd_sock, self.qmp_path()):
            if os.path.exists(stale):
                os.unlink(stale)
        args = self.command_line()
        with open(log, "wb") as f:
            f.write(("$ " + " ".join(args) + "\n").encode())
            f.flush()
            if self.console_on_stdio:
                self.proc = spawn(args, stderr=f)
            else:
                self.proc = spawn(args, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)
        self.shell = GuestShell(self.paths()[2], transcript)
        self.shell.connect(self.proc, timeout=30)
        boot, vsock = self.shell.wait_ready(timeout=ready_timeout)
        if vsock != "vsock=bound":
            raise VmError(f"the guest booted but the vsock driver did not bind the device ({vsock})")
        return boot

    def kill(self, sig=signal.SIGKILL):
        if self.shell:
            self.shell.close()
        if self.proc is not None:
            kill_process(self.proc, sig)
            if self.proc in _started:
                _started.remove(self.proc)


class Vm:
    """A daemon plus a QEMU guest, in a short temporary directory."""

    def __init__(self, daemon_binary=None, image_dir=None, daemon_args=(), memory_mib=256, console_on_stdio=False,
                 groups="default", siblings=(), user_net=False, extra_initrd=None):
        """siblings: [(cid, groups, boot)]: more VMs of the same daemon; those
        with boot=True get a QEMU of their own (sibling_qemus[cid]). user_net:
        every guest also gets QEMU user networking (see GUEST_FORWARDED_TCP_PORT).
        extra_initrd: f(daemon_binary, workdir) -> a cpio.gz for the main
        guest, added after the cached image's initramfs."""
        # AF_UNIX paths are limited to 107 bytes and the device appends _<port>.
        self.workdir = tempfile.mkdtemp(prefix="vuv", dir="/tmp")
        self.image_dir = image_dir or guest_image_dir()
        self.daemon = Daemon(daemon_binary or default_daemon(), self.workdir, extra_args=daemon_args, groups=groups,
                             siblings=[(cid, g) for cid, g, _ in siblings])
        try:
            extra = extra_initrd(self.daemon.binary, self.workdir) if extra_initrd else None
        except BaseException:
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        self.qemu = Qemu(self.image_dir, self.workdir, self.daemon.socket, memory_mib,
                         console_on_stdio=console_on_stdio, user_net=user_net, extra_initrd=extra)
        self.sibling_qemus = {}
        for cid, _, boot in siblings:
            if boot:
                subdir = os.path.join(self.workdir, f"g{cid}")
                os.mkdir(subdir)
                self.sibling_qemus[cid] = Qemu(self.image_dir, subdir, self.daemon.sibling_socket(cid), memory_mib,
                                               user_net=user_net)
        self.boot_id = None

    @property
    def shell(self):
        return self.qemu.shell

    @property
    def uds_path(self):
        return self.daemon.uds_path

    def host_tool(self):
        return os.path.join(self.image_dir, "vsock_tool")

    def start(self):
        start = time.monotonic()
        self.daemon.start()
        self.boot_id = self.qemu.start()
        for qemu in self.sibling_qemus.values():
            qemu.start()
        return time.monotonic() - start

    def restart_qemu(self):
        """SIGKILLs QEMU and boots a new one against the same daemon."""
        self.qemu.kill(signal.SIGKILL)
        self.boot_id = self.qemu.start()

    def reboot_guest(self, timeout=120.0):
        """Reboots the guest kernel; QEMU keeps running (no -no-reboot)."""
        self.shell.run("(sleep 0.2; echo b > /proc/sysrq-trigger) </dev/null >/dev/null 2>&1 &", timeout=10,
                       check=True)
        boot, vsock = self.shell.wait_ready(timeout=timeout, previous_boot=self.boot_id)
        if vsock != "vsock=bound":
            raise VmError(f"after the reboot the vsock driver did not bind the device ({vsock})")
        self.boot_id = boot

    def logs(self, lines=80):
        parts = [f"--- daemon log ({self.daemon.log_path}), last {lines} lines", tail(self.daemon.log_path, lines)]
        for g in range(max(1, self.qemu.generation - 1), self.qemu.generation + 1):
            w = self.workdir
            parts += [f"--- QEMU log #{g}", tail(os.path.join(w, f"qemu{g}.log"), lines),
                      f"--- guest console #{g}, last {lines} lines", tail(os.path.join(w, f"console{g}.log"), lines)]
        for cid, qemu in self.sibling_qemus.items():
            g = qemu.generation
            parts += [f"--- sibling VM cid={cid}: QEMU log", tail(os.path.join(qemu.workdir, f"qemu{g}.log"), lines),
                      f"--- sibling VM cid={cid}: console", tail(os.path.join(qemu.workdir, f"console{g}.log"), lines)]
        return "\n".join(parts)

    def stop(self):
        for qemu in self.sibling_qemus.values():
            qemu.kill(signal.SIGKILL)
        self.qemu.kill(signal.SIGKILL)
        self.daemon.stop()
        if os.environ.get("VUV_KEEP") == "1":
            print(f"vm: kept {self.workdir}", file=sys.stderr)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            print(self.logs(), file=sys.stderr)
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()


def cmd_shell(args):
    if args.console:
        vm = Vm(args.daemon, console_on_stdio=True)
        vm.daemon.start()
        print(f"vm: guest console below; Ctrl-A X quits. Host side: {vm.uds_path}", file=sys.stderr)
        vm.qemu.generation += 1
        proc = spawn(vm.qemu.command_line())
        proc.wait()
        vm.stop()
        return 0
    with Vm(args.daemon) as vm:
        print(f"vm: guest up (boot {vm.boot_id}). Host side: connect to {vm.uds_path}, or listen on "
              f"{vm.uds_path}_<port>. Type commands; Ctrl-D quits.", file=sys.stderr)
        while True:
            try:
                line = input("guest$ ")
            except EOFError:
                print()
                return 0
            if line.strip():
                result = vm.shell.run(line, timeout=args.timeout)
                sys.stdout.write(result.output)
                if result.status:
                    print(f"[exit status {result.status}]")


def cmd_run(args):
    with Vm(args.daemon) as vm:
        result = vm.shell.run(args.command, timeout=args.timeout)
        sys.stdout.write(result.output)
        return result.status


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--daemon", help="daemon binary (default: $VUV_DAEMON or build/vhost-user-vsock)")
    sub = parser.add_subparsers(dest="what", required=True)
    shell = sub.add_parser("shell", help="boot and type guest commands")
    shell.add_argument("--console", action="store_true", help="the guest console on this terminal instead")
    shell.add_argument("--timeout", type=int, default=600, help="per-command timeout in seconds")
    run = sub.add_parser("run", help="boot, run one guest command, exit with its status")
    run.add_argument("command")
    run.add_argument("--timeout", type=int, default=600)
    args = parser.parse_args()
    try:
        return cmd_shell(args) if args.what == "shell" else cmd_run(args)
    except VmError as e:
        print(f"vm: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
