"""Host-side helpers for the end-to-end tests: the test registry, host
sockets speaking the hybrid protocol, and running vsock_tool on the host."""
import os
import re
import select
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
import vm as vmlib  # noqa: E402  (scripts/vm.py)

TESTS = []  # (group, name, function) in definition order


def e2e_test(group):
    """Registers a test: a function taking the E2E context; it raises to fail
    and may return a detail string for the PASS line."""

    def register(fn):
        TESTS.append((group, fn.__name__, fn))
        return fn

    return register


class TestFailure(Exception):
    pass


class TestSkipped(Exception):
    """The test cannot run here; the runner prints SKIPPED with this reason."""


def expect(condition, message):
    if not condition:
        raise TestFailure(message)


def parse_fields(text, prefix="vsock_tool: ok"):
    """Parses the key=value fields of the first line starting with prefix."""
    for line in text.splitlines():
        if line.startswith(prefix):
            return dict(re.findall(r"(\w+)=(\S+)", line))
    raise TestFailure(f"no '{prefix}' line in:\n{text}")


def sha256_lines(text):
    """{index: (sent hex, received hex)} from vsock_tool --sha256 output."""
    return {int(i): (sent, recv)
            for i, sent, recv in re.findall(r"sha256_sent\[(\d+)\]=(\w+) sha256_recv\[\d+\]=(\w+)", text)}


def wait_closed(sock, timeout):
    """Reads and discards until the peer closes; returns (end, seconds, bytes)."""
    start = time.monotonic()
    total = 0
    sock.setblocking(False)
    while True:
        left = start + timeout - time.monotonic()
        if left <= 0:
            return "timeout", time.monotonic() - start, total
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            continue
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            continue
        except ConnectionResetError:
            return "reset", time.monotonic() - start, total
        if not chunk:
            return "eof", time.monotonic() - start, total
        total += len(chunk)


def read_line(sock, timeout):
    """Reads one '\\n'-terminated line byte by byte (so no payload after it is
    consumed). Returns (line without newline or None, end)."""
    line = b""
    deadline = time.monotonic() + timeout
    sock.setblocking(False)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None, "timeout"
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            continue
        try:
            byte = sock.recv(1)
        except BlockingIOError:
            continue
        except ConnectionResetError:
            return None, "reset"
        if not byte:
            return None, "eof" if not line else f"eof after {line!r}"
        if byte == b"\n":
            return line.decode(errors="replace"), "line"
        line += byte
        if len(line) > 256:
            return None, f"line too long: {line!r}"


def hybrid_connect(uds_path, port, timeout=10.0):
    """Host -> guest: connect, send CONNECT, return (socket, 'OK ...' line).
    Raises TestFailure if the device closes or answers anything else."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(uds_path)
    sock.sendall(f"CONNECT {port}\n".encode())
    line, end = read_line(sock, timeout)
    if line is None or not re.fullmatch(r"OK \d+", line):
        sock.close()
        raise TestFailure(f"CONNECT {port}: expected 'OK <port>', got {line!r} ({end})")
    return sock, line


def hybrid_connect_retry(uds_path, port, timeout=15.0):
    """hybrid_connect, retried while the guest's listener is not up yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return hybrid_connect(uds_path, port, timeout=max(1.0, deadline - time.monotonic()))
        except TestFailure:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


class UnixListener:
    """Host listener for guest -> host connections at <uds-path>_<port>."""

    def __init__(self, uds_path, port):
        self.path = f"{uds_path}_{port}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(128)

    def accept(self, timeout):
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            raise TestFailure(f"no guest connection to {self.path} within {timeout:.0f}s")
        conn, _ = self.sock.accept()
        return conn

    def close(self):
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class HostProcess:
    """A host process (socat or vsock_tool) started by a test; killed by PID."""

    def __init__(self, args, stdin=subprocess.DEVNULL):
        self.args = args
        self.proc = vmlib.spawn(args, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def finish(self, timeout):
        """Waits for exit; returns (status, stdout, stderr). Kills it on timeout."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            vmlib.kill_process(self.proc)
            out, err = self.proc.communicate()
            return None, out.decode(errors="replace"), err.decode(errors="replace") + "\n<killed: timed out>"
        finally:
            if self.proc in vmlib._started:
                vmlib._started.remove(self.proc)
        return self.proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    def kill(self):
        vmlib.kill_process(self.proc)


class E2E:
    """What a test gets: the running VM and shortcuts to both sides."""

    def __init__(self, vm):
        self.vm = vm

    @property
    def shell(self):
        return self.vm.shell

    @property
    def uds(self):
        return self.vm.uds_path

    def guest(self, script, timeout=60, check=False):
        return self.shell.run(script, timeout=timeout, check=check)

    def host_tool(self, *args):
        """Starts vsock_tool on the host; returns a HostProcess."""
        return HostProcess([self.vm.host_tool(), *map(str, args)])

    def expected_sha256(self, size, seed):
        out = subprocess.run([self.vm.host_tool(), "hash", str(size), "--seed", str(seed)], check=True,
                             capture_output=True).stdout
        return out.decode().strip()

    def wait_path(self, path, timeout=10.0):
        deadline = time.monotonic() + timeout
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise TestFailure(f"{path} did not appear within {timeout:.0f}s")
            time.sleep(0.02)

    def finish_host(self, proc, what, timeout=300):
        status, out, err = proc.finish(timeout)
        expect(status == 0, f"{what} (host) failed with status {status}:\n{out}{err}")
        return out

    def finish_guest_job(self, name, what, timeout=300):
        result = self.shell.wait_job(name, timeout=timeout)
        expect(result.status == 0, f"{what} (guest) failed with status {result.status}:\n{result.output}")
        return result.output

    def start_guest_listener(self, name, command, timeout=300):
        """Starts a guest vsock_tool listener as a job and waits for its 'listening' line."""
        self.shell.start_job(name, command, timeout=timeout)
        if not self.shell.wait_job_output(name, "vsock_tool: listening", timeout=30):
            result = self.shell.wait_job(name, timeout=10)
            raise TestFailure(f"guest listener '{command}' did not start:\n{result.output}")

    def echo_both_ways(self, port, conns, size, seeds, timeout):
        """`conns` guest->host connections to `port` and `conns` host->guest ones
        to `port + 1` at the same time, each sending `size` bytes (seeds[0] for
        the guest's, seeds[1] for the host's) and verifying the echo; `timeout`
        bounds each tool. Returns (guest clients' output, host clients' output)."""
        path = f"{self.uds}_{port}"
        host_echo = self.host_tool("ulisten", path, "--echo", "--conns", conns, "--quiet", "--timeout", timeout)
        host_client = None
        try:
            self.wait_path(path)
            self.start_guest_listener("echo", f"vsock_tool listen {port + 1} --echo --conns {conns} "
                                      f"--timeout {timeout}", timeout=timeout + 30)
            self.shell.start_job("clients", f"vsock_tool connect 2 {port} --conns {conns} --send {size} "
                                 f"--recv {size} --seed {seeds[0]} --timeout {timeout}", timeout=timeout + 30)
            host_client = self.host_tool("uconnect", self.uds, "--hybrid", port + 1, "--conns", conns, "--send", size,
                                         "--recv", size, "--seed", seeds[1], "--timeout", timeout)
            host_out = self.finish_host(host_client, "host clients (host->guest)", timeout=timeout + 50)
            guest_out = self.finish_guest_job("clients", "guest clients (guest->host)", timeout=timeout + 50)
            self.finish_guest_job("echo", "guest echo server", timeout=max(30, timeout // 4))
            self.finish_host(host_echo, "host echo server", timeout=max(30, timeout // 4))
        finally:
            host_echo.kill()
            if host_client:
                host_client.kill()
        return guest_out, host_out
