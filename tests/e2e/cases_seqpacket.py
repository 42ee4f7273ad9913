"""SOCK_SEQPACKET in the real guest, both ways, beside a stream: the guest
uses socat (type=5 is SOCK_SEQPACKET) and the host uses AF_UNIX SOCK_SEQPACKET
sockets by the convention in docs/configuration.md."""
import hashlib
import os
import socket
import threading
import time

from e2e_lib import HostProcess, TestFailure, e2e_test, expect

SIZES = [1, 100, 4096, 5000, 60000]  # 60000 < the guest's 64 KiB view of our buf_alloc


def recv_message(sock, timeout):
    """One whole message (bytes), b'' at EOF; fails if it was cut."""
    sock.settimeout(timeout)
    data, _, flags, _ = sock.recvmsg(1 << 20)
    expect(not flags & socket.MSG_TRUNC, "a message was cut (MSG_TRUNC)")
    return data


def hybrid_seqpacket_connect(uds, port, timeout=20.0):
    """Connects to <uds>_seqpacket with the one-message CONNECT handshake,
    retrying until the guest listens; returns (socket, OK line)."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.connect(f"{uds}_seqpacket")
        sock.send(f"CONNECT {port}\n".encode())
        try:
            reply = recv_message(sock, 5)
        except (ConnectionResetError, socket.timeout):
            reply = b""
        if reply.startswith(b"OK "):
            return sock, reply
        sock.close()
        if time.monotonic() > deadline:
            raise TestFailure(f"no OK message from <uds>_seqpacket for port {port} (last reply {reply!r})")
        time.sleep(0.2)


@e2e_test("seqpacket")
def seqpacket_guest_to_host(t, port=3400):
    """Guest socat SOCK_SEQPACKET connects to a host SOCK_SEQPACKET listener at
    <uds>_<port>; each file the guest sends arrives as exactly one message, and
    a stream connection beside it works too."""
    path = f"{t.uds}_{port}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(16)
    stream_path = f"{t.uds}_{port + 1}"
    stream = HostProcess(["socat", "-u", f"UNIX-LISTEN:{stream_path}", "-"])
    received = []
    errors = []

    def serve():
        try:
            for _ in SIZES:
                conn, _ = listener.accept()
                with conn:
                    message = recv_message(conn, 60)
                    after = recv_message(conn, 60)
                    received.append((len(message), hashlib.sha256(message).hexdigest(), after))
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(repr(e))

    server = threading.Thread(target=serve)
    server.start()
    try:
        listener.settimeout(120)
        script = "; ".join(
            f"head -c {size} /dev/urandom > /tmp/sq{size} && sha256sum /tmp/sq{size} && "
            f"socat -b 65536 -u OPEN:/tmp/sq{size} VSOCK-CONNECT:2:{port},type=5" for size in SIZES)
        result = t.guest(script + f"; echo stream-beside | socat -u - VSOCK-CONNECT:2:{port + 1}", timeout=120)
        expect(result.status == 0, f"guest socat failed with status {result.status}: {result.output}")
        server.join(timeout=60)
        expect(not errors, f"host listener: {errors}")
        sent = {}
        for line in result.output.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].startswith("/tmp/sq"):
                sent[int(parts[1][len("/tmp/sq"):])] = parts[0]
        expect(len(received) == len(SIZES), f"host got {len(received)} connections, want {len(SIZES)}")
        for (size, digest, after), want in zip(received, SIZES):
            expect(size == want and digest == sent.get(want),
                   f"host got one {size}-byte message (sha256 {digest}), want {want} bytes ({sent.get(want)})")
            expect(after == b"", f"more than one message on the {want}-byte connection: {after[:32]!r}")
        status, out, err = stream.finish(30)
        expect(status == 0 and out == "stream-beside\n", f"stream beside: status {status}, got {out!r} ({err})")
    finally:
        listener.close()
        stream.kill()
        server.join(timeout=5)
        for p in (path, stream_path):
            if os.path.exists(p):
                os.unlink(p)
    return f"{len(SIZES)} guest messages of {SIZES} bytes arrived whole; a stream beside them too"


@e2e_test("seqpacket")
def seqpacket_host_to_guest_echo(t, port=3410):
    """Host connects through <uds>_seqpacket; a guest socat SOCK_SEQPACKET
    listener echoes; every message comes back whole and alone."""
    t.shell.start_job("sqecho", f"socat -b 65536 VSOCK-LISTEN:{port},type=5 PIPE", timeout=120)
    sock, ok = hybrid_seqpacket_connect(t.uds, port)
    try:
        expect(ok.endswith(b"\n") and ok[3:-1].isdigit(), f"greeting {ok!r} is not one 'OK <port>\\n' message")
        for size in SIZES:
            message = os.urandom(size)
            sock.send(message)
            echo = recv_message(sock, 60)
            expect(echo == message, f"{size}-byte message came back as {len(echo)} bytes (or changed)")
    finally:
        sock.close()
    t.shell.wait_job("sqecho", timeout=30)
    return f"OK greeting {ok.strip().decode()}; messages of {SIZES} bytes echoed whole"


@e2e_test("seqpacket")
def seqpacket_message_larger_than_guest_buffer_resets(t, port=3420):
    """The guest listener's buffer is 4096 bytes (SO_VM_SOCKETS_BUFFER_SIZE): a
    smaller message is echoed, a larger one can never fit, so the connection
    is reset, never cut."""
    t.shell.start_job(
        # SO_VM_SOCKETS_BUFFER_SIZE (AF_VSOCK level 40, option 0) takes a u64: 4096, little-endian.
        "sqsmall", f"socat -b 65536 VSOCK-LISTEN:{port},type=5,setsockopt-bin=40:0:x0010000000000000 PIPE; "
        "echo exit=$?",
        timeout=120)
    log_start = os.path.getsize(t.vm.daemon.log_path)
    sock, _ = hybrid_seqpacket_connect(t.uds, port)
    try:
        small = os.urandom(3000)
        sock.send(small)
        echo = recv_message(sock, 60)
        if echo != small:
            sock.close()
            result = t.shell.wait_job("sqsmall", timeout=30)
            raise TestFailure(f"the 3000-byte message came back as {len(echo)} bytes; guest: {result.output}")
        sock.send(os.urandom(5000))
        try:
            end = recv_message(sock, 30)
        except ConnectionResetError:
            end = b""
        expect(end == b"", f"after a 5000-byte message the host got {len(end)} bytes instead of the close")
    finally:
        sock.close()
    t.shell.wait_job("sqsmall", timeout=30)  # Linux reports the reset to socat as end-of-file
    with open(t.vm.daemon.log_path, encoding="utf-8", errors="replace") as f:
        log = f.read()[log_start:]
    expect("host sent a 5000-byte seqpacket message, larger than the guest's receive buffer (4096 bytes)" in log,
           f"no refusal line naming the sizes in the daemon log:\n{log[-2000:]}")
    return "3000 bytes echoed; 5000 bytes (> the guest's 4096-byte buffer) reset the connection with a log line"
