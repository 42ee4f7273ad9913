"""The host half of the kernel's tools/testing/vsock/vsock_test, over our
hybrid convention instead of AF_VSOCK (this host never opens AF_VSOCK).

vsock_test runs in the guest as --mode=client or --mode=server; this peer
plays the other mode. It speaks vsock_test's control protocol (6.1's
control.c and util.c run_tests()): newline-terminated lines over TCP; before
each case both sides send "NEXT" (or "SKIP" to skip it) and read the other's,
and a case runs only if both sent NEXT; after the last case both send and
expect "COMPLETED". Inside a case the lines are the case's own (LISTENING,
SENDDONE, WAITDONE).

The data connection of every case is port 1234:
  - guest client: the guest connects to CID 2 port 1234, which the daemon
    connects to our AF_UNIX listener at <uds>_1234 (SOCK_SEQPACKET or
    SOCK_STREAM, as the case's type); we send LISTENING once it listens, as
    vsock_test's own server does;
  - guest server: after the guest's LISTENING we connect SOCK_SEQPACKET to
    <uds>_seqpacket and send one "CONNECT 1234\\n" message, getting one
    "OK <port>\\n" message; for a stream, SOCK_STREAM to <uds> and the same
    lines.

Each case below mirrors the other half of the 6.1 case of the same name, with
what AF_UNIX cannot express noted where it differs. Cases not in HOST_CASES
are answered with SKIP (and the guest is given --skip for them).
"""
import os
import select
import socket
import struct
import time

PORT = 1234
TIMEOUT = 10.0  # vsock_test's TIMEOUT for every blocking step
PAGE = os.sysconf("SC_PAGESIZE")


class PeerFailure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise PeerFailure(message)


class Control:
    """vsock_test's control channel: one TCP connection, lines of text."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def writeln(self, text):
        self.sock.sendall(text.encode() + b"\n")

    def readln(self, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            check(left > 0 and select.select([self.sock], [], [], left)[0], "timed out on the control socket")
            chunk = self.sock.recv(4096)
            check(chunk, "unexpected EOF on the control socket")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode(errors="replace")

    def expectln(self, text):
        line = self.readln()
        check(line == text, f"expected {text!r} on the control socket, got {line!r}")


class HostPeer:
    """Runs the host's half of each case; `uds` is the daemon's --uds-path."""

    def __init__(self, uds, control):
        self.uds = uds
        self.control = control

    # The data connection, as vsock_test's util.c sets it up.
    def accept(self, kind=socket.SOCK_SEQPACKET):
        path = f"{self.uds}_{PORT}"
        if os.path.exists(path):
            os.unlink(path)
        listener = socket.socket(socket.AF_UNIX, kind)
        try:
            listener.bind(path)
            listener.listen(1)
            self.control.writeln("LISTENING")
            check(select.select([listener], [], [], TIMEOUT)[0], f"no guest connection to {path}")
            conn, _ = listener.accept()
            return conn
        finally:
            listener.close()
            os.unlink(path)

    def seqpacket_connect(self):
        self.control.expectln("LISTENING")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.settimeout(TIMEOUT)
        sock.connect(f"{self.uds}_seqpacket")
        sock.send(f"CONNECT {PORT}\n".encode())
        reply = sock.recv(64)
        check(reply.startswith(b"OK ") and reply.endswith(b"\n") and reply[3:-1].isdigit(),
              f"CONNECT {PORT}: expected one 'OK <port>\\n' message, got {reply!r}")
        return sock

    def stream_accept(self):
        conn = self.accept(socket.SOCK_STREAM)
        conn.settimeout(TIMEOUT)
        return conn

    def stream_connect(self, expect_listener=True):
        """CONNECT 1234 over <uds>; returns the socket after 'OK <port>\\n',
        or None when the daemon closed it (the guest refused: no OK)."""
        if expect_listener:
            self.control.expectln("LISTENING")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT)
        sock.connect(self.uds)
        sock.sendall(f"CONNECT {PORT}\n".encode())
        line = b""
        while not line.endswith(b"\n") and len(line) < 64:
            byte = sock.recv(1)  # one byte at a time: nothing after the line is consumed
            if not byte:
                sock.close()
                check(not line, f"CONNECT {PORT}: closed after {line!r}")
                return None
            line += byte
        check(line.startswith(b"OK ") and line[3:-1].isdigit(), f"CONNECT {PORT}: got {line!r}, want 'OK <port>'")
        return sock

    # SOCK_SEQPACKET msg bounds: 7 one-byte messages, MSG_EOR on the 4th.
    def msg_bounds_server(self):
        with self.accept() as conn:
            self.control.expectln("SENDDONE")
            conn.settimeout(TIMEOUT)
            for i in range(7):
                data, _, flags, _ = conn.recvmsg(16)
                check(data == b"A" and not flags & socket.MSG_TRUNC, f"message {i}: {data!r}, bound violated")
            # (AF_UNIX carries no MSG_EOR: the 4th message's mark cannot be checked here.)
            check(conn.recv(16) == b"", "more than 7 messages before the guest's close")

    # SOCK_SEQPACKET MSG_TRUNC flag: a 32-byte message read into 16 bytes.
    def msg_trunc_server(self):
        with self.accept() as conn:
            self.control.expectln("SENDDONE")
            conn.settimeout(TIMEOUT)
            # recvmsg(MSG_TRUNC)'s return value (the whole length) is not
            # visible through Python's recvmsg, so peek it with recv_into.
            length = conn.recv_into(bytearray(16), 16, socket.MSG_PEEK | socket.MSG_TRUNC)
            check(length == 32, f"MSG_TRUNC: the message is {length} bytes, want 32")
            data, _, flags, _ = conn.recvmsg(16)
            check(len(data) == 16 and flags & socket.MSG_TRUNC, f"no MSG_TRUNC: {len(data)} bytes, flags {flags:#x}")

    def msg_trunc_client(self):
        with self.seqpacket_connect() as sock:
            check(sock.send(bytes(32)) == 32, "send of 32 bytes")
            self.control.writeln("SENDDONE")

    # SOCK_SEQPACKET timeout: a read with SO_RCVTIMEO of 1 s and no data fails
    # with EAGAIN after about 1 s (at most 0.25 s more).
    def timeout_server(self):
        with self.accept():
            self.control.expectln("WAITDONE")

    def timeout_client(self):
        with self.seqpacket_connect() as sock:
            sock.settimeout(None)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 1, 0))
            start = time.monotonic()
            try:
                data = sock.recv(1)
                raise PeerFailure(f"expected the read to time out, got {data!r}")
            except BlockingIOError:
                pass
            overhead = time.monotonic() - start - 1.0
            check(overhead <= 0.25, f"too much time in read: {overhead:.3f} s over the 1 s timeout")
            self.control.writeln("WAITDONE")

    # SOCK_SEQPACKET invalid receive buffer: two 3-page messages ('a'*, 'b'*);
    # the kernel's server reads the first into a buffer with an unmapped page
    # (ENOMEM, message gone) and the second whole. A host AF_UNIX read into
    # such a buffer tests the host kernel, not the device, so the host server
    # reads both and checks that each arrived whole and in order.
    def invalid_rec_buffer_server(self):
        size = 3 * PAGE
        with self.accept() as conn:
            conn.settimeout(TIMEOUT)
            for pattern in (b"a", b"b"):
                data, _, flags, _ = conn.recvmsg(2 * size)
                check(data == pattern * size, f"the {pattern!r} message: {len(data)} bytes, want {size} of {pattern!r}")

    def invalid_rec_buffer_client(self):
        size = 3 * PAGE
        with self.seqpacket_connect() as sock:
            for pattern in (b"a", b"b"):
                check(sock.send(pattern * size) == size, f"send of the {pattern!r} message")

    # SOCK_STREAM connection reset: a connect to a port nobody listens on is
    # refused (the guest: ECONNRESET; the host: closed without OK).
    def connection_reset_server(self):
        check(not os.path.exists(f"{self.uds}_{PORT}"), "something listens on <uds>_1234")

    def connection_reset_client(self):
        sock = self.stream_connect(expect_listener=False)
        check(sock is None, "CONNECT to a guest port with no socket got OK")

    # SOCK_STREAM bind only: a socket bound but not listening refuses too.
    def bind_only_server(self):
        path = f"{self.uds}_{PORT}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bound:
            bound.bind(path)
            try:
                self.control.writeln("BIND")
                self.control.expectln("DONE")
            finally:
                os.unlink(path)

    def bind_only_client(self):
        self.control.expectln("BIND")
        sock = self.stream_connect(expect_listener=False)
        check(sock is None, "CONNECT to a bound, not listening guest port got OK")
        self.control.writeln("DONE")

    # SOCK_STREAM client close / server close: one side sends a byte and
    # closes; the other sees the close, a send fails with EPIPE, then it reads
    # the byte and end-of-file.
    def send_byte_and_close(self, sock):
        with sock:
            send_byte(sock)

    def see_close_then_epipe(self, sock):
        with sock:
            wait_remote_close(sock)
            try:
                sock.send(b"A")
                raise PeerFailure("send after the guest's close succeeded, want EPIPE")
            except BrokenPipeError:
                pass
            recv_byte(sock)
            check(sock.recv(1) == b"", "no end-of-file after the byte")

    def client_close_server(self):
        self.see_close_then_epipe(self.stream_accept())

    def client_close_client(self):
        self.send_byte_and_close(self.stream_connect())

    def server_close_server(self):
        self.send_byte_and_close(self.stream_accept())

    def server_close_client(self):
        self.see_close_then_epipe(self.stream_connect())

    # SOCK_STREAM multiple connections: 100 connections, each set up as its
    # own listen/LISTENING/accept; odd ones carry a byte one way, even ones
    # the other way.
    def multiconn(self, guest_mode):
        socks = []
        try:
            for _ in range(MULTICONN):
                socks.append(self.stream_accept() if guest_mode == "client" else self.stream_connect())
            for i, sock in enumerate(socks):
                # The guest client receives on odd connections, its server sends on them.
                if (i % 2 == 1) == (guest_mode == "client"):
                    send_byte(sock)
                else:
                    recv_byte(sock)
        finally:
            for sock in socks:
                sock.close()

    def multiconn_server(self):
        self.multiconn("client")

    def multiconn_client(self):
        self.multiconn("server")

    # SOCK_STREAM MSG_PEEK: the byte is peeked, then read.
    def msg_peek_server(self):
        with self.stream_accept() as conn:
            check(conn.recv(1, socket.MSG_PEEK) == b"A", "MSG_PEEK did not return the byte")
            recv_byte(conn)

    def msg_peek_client(self):
        self.send_byte_and_close(self.stream_connect())

    # SOCK_STREAM poll() + SO_RCVLOWAT: 1 byte, then 127 more one by one; the
    # receiver (SO_RCVLOWAT 128) is readable only once all 128 are there.
    def poll_rcvlowat_server(self):
        with self.stream_accept() as conn:
            send_byte(conn)
            self.control.writeln("SRVSENT")
            self.control.expectln("CLNSENT")
            for _ in range(LOWAT - 1):
                send_byte(conn)
            self.control.expectln("POLLDONE")

    def poll_rcvlowat_client(self):
        # AF_UNIX's poll() ignores SO_RCVLOWAT, so the host checks what the
        # guest's poll() checks by counting the bytes that arrived.
        with self.stream_connect() as sock:
            self.control.expectln("SRVSENT")
            time.sleep(1.0)  # the guest's poll() waits 1 s for nothing to happen
            check(len(peek_available(sock)) == 1, "after SRVSENT, not exactly the 1 byte sent")
            self.control.writeln("CLNSENT")
            deadline = time.monotonic() + 10
            while len(peek_available(sock)) < LOWAT:
                check(time.monotonic() < deadline, f"{LOWAT} bytes did not arrive within 10 s")
                time.sleep(0.01)
            check(sock.recv(LOWAT, socket.MSG_DONTWAIT) == b"A" * LOWAT, f"recv of {LOWAT} bytes")
            self.control.writeln("POLLDONE")


MULTICONN = 100
LOWAT = 128


def send_byte(sock):
    check(sock.send(b"A") == 1, "send of one byte")


def recv_byte(sock):
    byte = sock.recv(1)
    check(byte == b"A", f"expected the byte 'A', got {byte!r}")


def peek_available(sock):
    timeout = sock.gettimeout()
    sock.settimeout(0)  # with a timeout, Python would wait out an EAGAIN
    try:
        return sock.recv(4096, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return b""
    finally:
        sock.settimeout(timeout)


def wait_remote_close(sock):
    """util.c's vsock_wait_remote_close: poll for RDHUP/HUP, TIMEOUT s."""
    poller = select.poll()
    poller.register(sock, select.POLLRDHUP | select.POLLHUP)
    events = poller.poll(TIMEOUT * 1000)
    check(events and events[0][1] & (select.POLLRDHUP | select.POLLHUP), "the guest's close was not seen")


# Case name (as `vsock_test --list` prints it) -> (the host's half when the
# guest is the client, the host's half when the guest is the server).
HOST_CASES = {
    "SOCK_STREAM connection reset": (HostPeer.connection_reset_server, HostPeer.connection_reset_client),
    "SOCK_STREAM bind only": (HostPeer.bind_only_server, HostPeer.bind_only_client),
    "SOCK_STREAM client close": (HostPeer.client_close_server, HostPeer.client_close_client),
    "SOCK_STREAM server close": (HostPeer.server_close_server, HostPeer.server_close_client),
    "SOCK_STREAM multiple connections": (HostPeer.multiconn_server, HostPeer.multiconn_client),
    "SOCK_STREAM MSG_PEEK": (HostPeer.msg_peek_server, HostPeer.msg_peek_client),
    "SOCK_STREAM poll() + SO_RCVLOWAT": (HostPeer.poll_rcvlowat_server, HostPeer.poll_rcvlowat_client),
    "SOCK_SEQPACKET msg bounds": (HostPeer.msg_bounds_server, None),
    "SOCK_SEQPACKET MSG_TRUNC flag": (HostPeer.msg_trunc_server, HostPeer.msg_trunc_client),
    "SOCK_SEQPACKET timeout": (HostPeer.timeout_server, HostPeer.timeout_client),
    "SOCK_SEQPACKET invalid receive buffer": (HostPeer.invalid_rec_buffer_server, HostPeer.invalid_rec_buffer_client),
}

# Why a case is not run in a direction (printed as SKIPPED with the reason).
NOT_RUN = {
    ("SOCK_SEQPACKET msg bounds", "server"):
        "the guest server wants MSG_EOR on the 4th message only, but AF_UNIX SOCK_SEQPACKET has no record mark: "
        "every host message reaches the guest with MSG_EOR (docs/configuration.md)",
}


def host_half(name, guest_mode):
    """The host's function for a case, or None when the host does not run it."""
    pair = HOST_CASES.get(name)
    if pair is None:
        return None
    return pair[0] if guest_mode == "client" else pair[1]


def skip_reason(name, guest_mode):
    if (name, guest_mode) in NOT_RUN:
        return NOT_RUN[(name, guest_mode)]
    if host_half(name, guest_mode) is None:
        return "the host peer does not implement this case"
    return None


def run_cases(peer, cases, guest_mode):
    """run_tests() of util.c from the host's side: cases is [(id, name)] as
    listed by the guest. Returns {id: 'ok' | 'skipped'}; raises PeerFailure
    naming the case that failed."""
    results = {}
    for case_id, name in cases:
        run = host_half(name, guest_mode) if skip_reason(name, guest_mode) is None else None
        peer.control.writeln("NEXT" if run else "SKIP")
        line = peer.control.readln()
        if line == "SKIP" or run is None:
            results[case_id] = "skipped"
            continue
        check(line == "NEXT", f"case {case_id}: expected NEXT on the control socket, got {line!r}")
        try:
            run(peer)
        except (PeerFailure, OSError) as e:
            raise PeerFailure(f"case {case_id} ({name}), host side: {e}") from e
        results[case_id] = "ok"
    peer.control.writeln("COMPLETED")
    peer.control.expectln("COMPLETED")
    return results
