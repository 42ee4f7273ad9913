"""The seed's exchanges verbatim, refused connections and half-close."""
import os
import re
import select
import socket
import subprocess
import time

from e2e_lib import HostProcess, TestFailure, UnixListener, e2e_test, expect, parse_fields, read_line, vmlib


def read_pipe_until(proc, predicate, timeout):
    """Reads a HostProcess's stdout until predicate(data), EOF or timeout."""
    fd = proc.proc.stdout.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while not predicate(data):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
    return data


def seed_exchange_guest_to_host(t, port=1234):
    """host: socat - UNIX-LISTEN:<uds>_1234; guest: echo -e "Hello from guest!" | socat - VSOCK-CONNECT:2:1234"""
    path = f"{t.uds}_{port}"
    socat = HostProcess(["socat", "-", f"UNIX-LISTEN:{path}"], stdin=subprocess.PIPE)
    try:
        t.wait_path(path)
        result = t.guest(f'echo -e "Hello from guest!" | socat - VSOCK-CONNECT:2:{port}', timeout=30)
        expect(result.status == 0, f"guest socat failed with status {result.status}: {result.output}")
        data = read_pipe_until(socat, lambda d: b"\n" in d, timeout=15)
        status, rest, err = socat.finish(timeout=15)
        received = data + rest.encode()
        expect(received == b"Hello from guest!\n",
               f"host socat received {received!r}, want b'Hello from guest!\\n' (stderr: {err})")
        expect(status == 0, f"host socat exited with status {status}: {err}")
    finally:
        socat.kill()
        if os.path.exists(path):
            os.unlink(path)
    return f"host socat on {os.path.basename(path)} received exactly 'Hello from guest!\\n'"


def seed_exchange_host_to_guest(t, port=1234):
    """guest: socat - VSOCK-LISTEN:1234; host: socat - UNIX-CONNECT:<uds>, 'CONNECT 1234'."""
    t.guest("rm -f /tmp/seed.out /tmp/seed.stop", check=True)
    # The guest's socat keeps its stdin open until we tell it to stop, so the
    # connection stays up while the host writes back.
    t.shell.start_job(
        "seed", f'{{ echo "Hello from guest!"; while [ ! -f /tmp/seed.stop ]; do sleep 0.05; done; }} | '
        f"socat - VSOCK-LISTEN:{port} > /tmp/seed.out", timeout=60)
    deadline = time.monotonic() + 20
    while True:  # retry until the guest's listener is up
        socat = HostProcess(["socat", "-", f"UNIX-CONNECT:{t.uds}"], stdin=subprocess.PIPE)
        socat.proc.stdin.write(f"CONNECT {port}\n".encode())
        socat.proc.stdin.flush()
        data = read_pipe_until(socat, lambda d: b"\n" in d, timeout=5)
        if data.startswith(b"OK "):
            break
        socat.kill()
        socat.finish(5)
        if time.monotonic() > deadline:
            raise TestFailure(f"host socat never got an OK line (last attempt read {data!r})")
        time.sleep(0.2)
    try:
        ok_line, _, rest = data.partition(b"\n")
        expect(re.fullmatch(rb"OK \d+", ok_line), f"handshake reply {ok_line!r} is not 'OK <port>'")
        rest += read_pipe_until(socat, lambda d: b"Hello from guest!\n" in rest + d, timeout=15)
        expect(rest == b"Hello from guest!\n", f"host socat got {rest!r} after the OK line")
        socat.proc.stdin.write(b"Hello from host!\n")
        socat.proc.stdin.flush()
        result = t.guest('while ! grep -q "Hello from host!" /tmp/seed.out; do sleep 0.05; done; cat /tmp/seed.out',
                         timeout=20)
        expect(result.status == 0 and result.output == "Hello from host!\n",
               f"guest socat wrote {result.output!r} (status {result.status})")
        t.guest("touch /tmp/seed.stop", check=True)
        t.finish_guest_job("seed", "guest socat VSOCK-LISTEN", timeout=30)
        status, tail, err = socat.finish(timeout=15)
        expect(status == 0 and tail == "", f"host socat: status {status}, extra output {tail!r}, stderr {err}")
    finally:
        socat.kill()
    return f"host got '{ok_line.decode()}' and 'Hello from guest!'; guest got 'Hello from host!'"


@e2e_test("basic")
def ring_layout_negotiated(t):
    """The guest's vsock device (virtio id 19) has VERSION_1 (bit 32) and, with
    VUV_PACKED=1 (QEMU packed=on), VIRTIO_F_RING_PACKED (bit 34), else not."""
    script = ('for d in /sys/bus/virtio/devices/*; do '
              '[ "$(cat $d/device)" = 0x0013 ] && cat $d/features; done')
    result = t.guest(script, timeout=30)
    bits = result.output.strip()
    expect(len(bits) == 64 and set(bits) <= {"0", "1"}, f"no vsock feature bits in the guest: {result.output!r}")
    packed = vmlib.packed_ring()
    expect(bits[32] == "1", f"VERSION_1 missing: {bits}")
    expect(bits[34] == ("1" if packed else "0"), f"bit 34 is {bits[34]} with packed={packed}: {bits}")
    return f"features {bits}: {'packed' if packed else 'split'} rings"


@e2e_test("basic")
def seed_guest_to_host(t):
    return seed_exchange_guest_to_host(t)


@e2e_test("basic")
def seed_host_to_guest(t):
    return seed_exchange_host_to_guest(t)


@e2e_test("basic")
def guest_connect_no_listener(t):
    """The device must answer a refused guest connect with RST at once (the
    peers let the guest time out after 2 s)."""
    expect(not os.path.exists(f"{t.uds}_4444"), "stale host listener")
    times = []
    for _ in range(3):
        result = t.guest("vsock_tool connect 2 4444 --expect-error ECONNRESET", timeout=30)
        fields = parse_fields(result.output, "connect_error")
        expect(result.status == 0, f"guest connect to a port with no host listener: {result.output.strip()}"
               " (want ECONNRESET)")
        times.append(float(fields["seconds"]))
    expect(max(times) < 1.0, f"refused connect took {max(times):.3f}s, want < 1s")
    return f"ECONNRESET after {', '.join(f'{s * 1000:.1f}' for s in times)} ms"


@e2e_test("basic")
def host_connect_no_listener(t):
    """CONNECT to a guest port nobody listens on: closed, never 'OK'."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(t.uds)
    start = time.monotonic()
    sock.sendall(b"CONNECT 4445\n")
    line, end = read_line(sock, timeout=10)
    elapsed = time.monotonic() - start
    sock.close()
    expect(line is None, f"got {line!r} for a port with no guest listener")
    expect(end in ("eof", "reset"), f"connection not closed within 10s ({end})")
    return f"closed ({end}) after {elapsed * 1000:.1f} ms with no OK"


@e2e_test("basic")
def half_close_guest_to_host(t):
    """Guest sends, shutdown(SHUT_WR), then still reads the host's reply,
    which the host only sends after it saw EOF."""
    path = f"{t.uds}_5001"
    host = t.host_tool("ulisten", path, "--recv", "300K", "--recv-seed", 11, "--send-after-eof", "--send", "200K",
                       "--seed", 22, "--quiet", "--timeout", 60)
    try:
        t.wait_path(path)
        result = t.guest("vsock_tool connect 2 5001 --send 300K --seed 11 --shut-wr --recv 200K --recv-seed 22 "
                         "--expect-eof", timeout=60)
        expect(result.status == 0, f"guest side failed:\n{result.output}")
        t.finish_host(host, "host listener", timeout=30)
    finally:
        host.kill()
    return "guest sent 300 KiB, half-closed, then received the host's 200 KiB reply (verified)"


@e2e_test("basic")
def half_close_host_to_guest(t):
    t.start_guest_listener("half", "vsock_tool listen 5002 --recv 300K --recv-seed 33 --send-after-eof "
                           "--send 200K --seed 44 --timeout 60", timeout=90)
    host = t.host_tool("uconnect", t.uds, "--hybrid", 5002, "--send", "300K", "--seed", 33, "--shut-wr",
                       "--recv", "200K", "--recv-seed", 44, "--expect-eof", "--timeout", 60)
    t.finish_host(host, "host client", timeout=90)
    t.finish_guest_job("half", "guest listener", timeout=60)
    return "host sent 300 KiB, half-closed, then received the guest's 200 KiB reply (verified)"


@e2e_test("basic")
def guest_listener_closed_host_sees_eof(t):
    """After a guest-side close the host socket reads EOF, not a hang."""
    with UnixListener(t.uds, 5003) as listener:
        t.shell.start_job("short", "vsock_tool connect 2 5003 --send 1000 --seed 3", timeout=60)
        conn = listener.accept(timeout=30)
        total = 0
        conn.settimeout(15)
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                total += len(chunk)
        except socket.timeout:
            raise TestFailure(f"no EOF within 15s after the guest closed ({total} bytes read)") from None
        finally:
            conn.close()
        t.finish_guest_job("short", "guest sender", timeout=30)
    expect(total == 1000, f"host read {total} bytes, want 1000")
    return "1000 bytes then EOF"
