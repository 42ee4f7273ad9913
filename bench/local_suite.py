"""The groups that need no VM: the AF_UNIX ceiling and the simulated guest
driving the real daemon (src/testing/ through build/vhost-user-vsock)."""
from __future__ import annotations

from benchlib import Context, Measurement

CEILING_BINARY = "bench/bench_unix_ceiling"
SIM_BINARY = "bench/bench_sim"
SCALE_BINARY = "bench/bench_scale"
DAEMON_BINARY = "vhost-user-vsock"

WRITE_SIZES = [("64k", "64K"), ("4k", "4K")]
STREAM_COUNTS = [1, 8]
# Transfer directions, sim and VM alike: (measurement id part, text).
DIRECTIONS = [("g2h", "guest→host"), ("h2g", "host→guest")]
# Non-default daemon settings measured beside the defaults (guest→host, 1 stream):
# our buf_alloc per connection, which bounds the bytes in flight per stream.
# The default is 256K; 64K is vhost-device-vsock's default (and ours before 2026-12).
TX_BUFFER_ROWS = [("tx64k", "64K", 64 * 1024), ("tx1m", "1M", 1024 * 1024)]
# Opt-in busy polling (--poll-us), measured beside the defaults in the same
# round: the 64 KiB rows both ways and the round trip. 50 µs covers the gap
# between a simulated guest's packets while it streams, and a round trip on
# this machine (~30-60 µs), so a window rarely runs out mid-exchange, while
# an idle worker spins for at most 50 µs after its last packet.
POLL_US = 50
# Virtqueue layouts: the 1-stream throughput rows and the round trip run once
# per layout, packed right after split in each round so their ratio is paired
# in time. Split keeps the plain ids; packed rows end in ".packed".
RINGS = [("", "split"), (".packed", "packed")]
# Connects: (kind, text, connections in flight, id suffix, how). The serial rows
# keep their ids; they are bound by one handshake's wake-ups, not by the daemon.
CONNECTS_IN_FLIGHT = 16
CONNECT_ROWS = [
    (kind, what, parallel, suffix, how)
    for kind, what in (("host", "host-initiated connects (CONNECT→OK→close)"),
                       ("guest", "guest-initiated connects (REQUEST→RESPONSE→close)"))
    for parallel, suffix, how in ((1, "", "one at a time (latency-bound)"),
                                  (CONNECTS_IN_FLIGHT, f".p{CONNECTS_IN_FLIGHT}",
                                   f"{CONNECTS_IN_FLIGHT} in flight"))
]
# SOCK_SEQPACKET message sizes (id part, --message-size, full-run message count).
SEQPACKET_SIZES = [("64b", "64", 200000), ("4k", "4K", 100000), ("64k", "64K", 16384)]


def stream_bytes(ctx: Context, write_size: str, streams: int) -> str:
    """Bytes per stream: enough for ~0.5-2 s per run at the ceiling's speed."""
    if ctx.smoke:
        return "16M" if streams > 1 else "64M"
    total_mib = 2048 if write_size == "64K" else 1024
    return f"{total_mib // streams}M"


def seqpacket_count(ctx: Context, full: int) -> str:
    return str(min(full, 2000) if ctx.smoke else full)


def ceiling_measurements(ctx: Context) -> list[Measurement]:
    exe = str(ctx.binary(CEILING_BINARY))
    out: list[Measurement] = []
    for pin in ctx.pins:
        for tag, size in WRITE_SIZES:
            for streams in STREAM_COUNTS:
                out.append(Measurement(
                    id=f"ceiling.tput.{tag}.{streams}.{pin}", group="ceiling",
                    label=f"AF_UNIX stream, {size} writes, {streams} stream{'s' if streams > 1 else ''}",
                    unit="Gbit/s", higher_is_better=True, pin=pin, key="gbit_per_s",
                    argv=[exe, "stream", "--write-size", size, "--streams", str(streams),
                          "--bytes", stream_bytes(ctx, size, streams)]))
        for tag, size, count in SEQPACKET_SIZES:
            out.append(Measurement(
                id=f"ceiling.seq.{tag}.{pin}", group="ceiling",
                label=f"AF_UNIX SOCK_SEQPACKET socketpair, {size}-byte messages",
                unit="msg/s", higher_is_better=True, pin=pin, key="messages_per_s",
                argv=[exe, "seqpacket", "--message-size", size, "--count", seqpacket_count(ctx, count)]))
        out.append(Measurement(
            id=f"ceiling.rtt.{pin}", group="ceiling", label="AF_UNIX 1-byte round trip",
            unit="µs", higher_is_better=False, pin=pin, key="mean_us",
            argv=[exe, "rtt", "--count", "2000" if ctx.smoke else "20000"]))
    return out


def sim_measurements(ctx: Context) -> list[Measurement]:
    exe = str(ctx.binary(SIM_BINARY))
    common = ["--daemon", str(ctx.binary(DAEMON_BINARY)), "--dir", str(ctx.scratch)]
    out: list[Measurement] = []
    for pin in ctx.pins:
        for direction, name in DIRECTIONS:
            for tag, size in WRITE_SIZES:
                for streams in STREAM_COUNTS:
                    for suffix, ring in (RINGS if streams == 1 else RINGS[:1]):
                        out.append(Measurement(
                            id=f"sim.{direction}.{tag}.{streams}.{pin}{suffix}", group="sim",
                            label=f"sim {name}, {size} writes, {streams} stream{'s' if streams > 1 else ''}"
                            + (", PACKED virtqueues" if suffix else ""),
                            unit="Gbit/s", higher_is_better=True, pin=pin, key="gbit_per_s",
                            argv=[exe, "stream", "--direction", direction, "--write-size", size,
                                  "--streams", str(streams), "--bytes", stream_bytes(ctx, size, streams),
                                  "--ring", ring] + common))
        for tag, size in WRITE_SIZES:
            for suffix, text, value in TX_BUFFER_ROWS:
                out.append(Measurement(
                    id=f"sim.g2h.{tag}.1.{pin}.{suffix}", group="sim",
                    label=f"sim guest→host, {size} writes, 1 stream, NON-DEFAULT --tx-buffer-size {text}",
                    unit="Gbit/s", higher_is_better=True, pin=pin, key="gbit_per_s",
                    argv=[exe, "stream", "--direction", "g2h", "--write-size", size, "--streams", "1",
                          "--bytes", stream_bytes(ctx, size, 1), "--daemon-args", f"--tx-buffer-size {value}"]
                    + common))
        for direction, name in DIRECTIONS:
            out.append(Measurement(
                id=f"sim.{direction}.64k.1.{pin}.poll", group="sim",
                label=f"sim {name}, 64K writes, 1 stream, NON-DEFAULT --poll-us {POLL_US}",
                unit="Gbit/s", higher_is_better=True, pin=pin, key="gbit_per_s",
                argv=[exe, "stream", "--direction", direction, "--write-size", "64K", "--streams", "1",
                      "--bytes", stream_bytes(ctx, "64K", 1), "--daemon-args", f"--poll-us {POLL_US}"] + common))
        out.append(Measurement(
            id=f"sim.rtt.{pin}.poll", group="sim",
            label=f"sim 1-byte round trip (host→guest→host), NON-DEFAULT --poll-us {POLL_US}",
            unit="µs", higher_is_better=False, pin=pin, key="mean_us",
            argv=[exe, "rtt", "--count", "2000" if ctx.smoke else "20000", "--daemon-args", f"--poll-us {POLL_US}"]
            + common))
        for direction, name in DIRECTIONS:
            for tag, size, count in SEQPACKET_SIZES:
                out.append(Measurement(
                    id=f"sim.seq.{direction}.{tag}.{pin}", group="sim",
                    label=f"sim SOCK_SEQPACKET {name}, {size}-byte messages",
                    unit="msg/s", higher_is_better=True, pin=pin, key="messages_per_s",
                    argv=[exe, "seqpacket", "--direction", direction, "--message-size", size,
                          "--count", seqpacket_count(ctx, count)] + common))
        for suffix, ring in RINGS:
            out.append(Measurement(
                id=f"sim.rtt.{pin}{suffix}", group="sim",
                label="sim 1-byte round trip (host→guest→host)" + (", PACKED virtqueues" if suffix else ""),
                unit="µs", higher_is_better=False, pin=pin, key="mean_us",
                argv=[exe, "rtt", "--count", "2000" if ctx.smoke else "20000", "--ring", ring] + common))
    # Connection setup and memory are about the daemon's bookkeeping, not
    # scheduling: measured unpinned only.
    # One at a time measures a handshake's latency across three processes;
    # CONNECTS_IN_FLIGHT at once measures what the daemon can take.
    count = "1000" if ctx.smoke else "20000"
    for kind, what, parallel, suffix, how in CONNECT_ROWS:
        out.append(Measurement(
            id=f"sim.connect.{kind}{suffix}.free", group="sim", label=f"sim {what}, {how}",
            unit="conn/s", higher_is_better=True, key="per_second",
            argv=[exe, f"connect-{kind}", "--count", count, "--parallel", str(parallel)] + common))
    idle = "500" if ctx.smoke else "10000"
    out.append(Measurement(
        id="sim.idle.rss.free", group="sim", label=f"daemon VmRSS with {int(idle):,} idle connections",
        unit="MiB", higher_is_better=False, key="rss_kib", extract=lambda o: o["rss_kib"] / 1024.0,
        argv=[exe, "idle", "--conns", idle] + common, timeout=300))
    out.append(Measurement(
        id="sim.idle.per_conn.free", group="sim", label="daemon memory per idle connection (RSS growth ÷ conns)",
        unit="KiB", higher_is_better=False, key="per_conn_bytes", extract=lambda o: o["per_conn_bytes"] / 1024.0,
        argv=[], derived_from="sim.idle.rss.free"))
    out += scale_measurements(ctx)
    return out


def scale_measurements(ctx: Context) -> list[Measurement]:
    """One daemon, many simulated VMs (all in the default group, so all are
    siblings), each holding idle connections, then a few moving data at once.
    The issue asks 64 x 1,000; every connection is one host socket in the
    daemon and one in the benchmark, and this machine's hard RLIMIT_NOFILE
    (20,000) leaves room for about 248 per VM (the daemon lowers its cap to
    fit, and says so), so the full run takes 64 x 200."""
    vms, conns, active, size, idle = ("4", "50", "2", "16M", "1") if ctx.smoke else ("64", "200", "8", "256M", "5")
    what = f"{vms} VMs × {conns} idle connections"
    argv = [str(ctx.binary(SCALE_BINARY)), "run", "--daemon", str(ctx.binary(DAEMON_BINARY)), "--vms", vms,
            "--conns", conns, "--active", active, "--bytes", size, "--idle-seconds", idle]
    source = "sim.scale.rss.free"
    return [
        Measurement(id=source, group="sim", label=f"scale: daemon's own memory (VmRSS − RssShmem), {what}",
                    unit="MiB", higher_is_better=False, key="own_rss_kib",
                    extract=lambda o: o["own_rss_kib"] / 1024.0, argv=argv, timeout=300),
        Measurement(id="sim.scale.per_conn.free", group="sim", label=f"scale: memory per connection, {what}",
                    unit="KiB", higher_is_better=False, key="per_conn_bytes",
                    extract=lambda o: o["per_conn_bytes"] / 1024.0, argv=[], derived_from=source),
        Measurement(id="sim.scale.idle_cpu.free", group="sim",
                    label=f"scale: daemon CPU per idle VM ({idle} s idle, {what})",
                    unit="ms/s", higher_is_better=False, key="idle_cpu_ms_per_vm_per_s", argv=[],
                    derived_from=source),
        Measurement(id="sim.scale.idle_wakeups.free", group="sim",
                    label=f"scale: daemon wake-ups in {idle} s idle, all VMs ({what})",
                    unit="wake-ups", higher_is_better=False, key="idle_wakeups", argv=[], derived_from=source),
        Measurement(id="sim.scale.gbit.free", group="sim",
                    label=f"scale: guest→host total, {active} of the {vms} VMs moving {size} each at once",
                    unit="Gbit/s", higher_is_better=True, key="gbit_s_total", argv=[], derived_from=source),
    ]


def peer_measurements(ctx: Context, peer: str, name: str) -> list[Measurement]:
    """The sim figures that compare backends, with a peer daemon (any backend with
    vhost-device-vsock's command line) in place of ours, in the same rounds."""
    exe = str(ctx.binary(SIM_BINARY))
    common = ["--daemon", peer, "--daemon-cli", "compat", "--dir", str(ctx.scratch)]
    out: list[Measurement] = []
    for pin in ctx.pins:
        for direction, text in DIRECTIONS:
            for tag, size in WRITE_SIZES:
                out.append(Measurement(
                    id=f"peer.{direction}.{tag}.1.{pin}", group="sim",
                    label=f"PEER {name}: sim {text}, {size} writes, 1 stream",
                    unit="Gbit/s", higher_is_better=True, pin=pin, key="gbit_per_s",
                    argv=[exe, "stream", "--direction", direction, "--write-size", size, "--streams", "1",
                          "--bytes", stream_bytes(ctx, size, 1)] + common))
        out.append(Measurement(
            id=f"peer.rtt.{pin}", group="sim", label=f"PEER {name}: sim 1-byte round trip",
            unit="µs", higher_is_better=False, pin=pin, key="mean_us",
            argv=[exe, "rtt", "--count", "2000" if ctx.smoke else "20000"] + common))
    count = "1000" if ctx.smoke else "20000"
    for kind, text in (("host", "host-initiated"), ("guest", "guest-initiated")):
        out.append(Measurement(
            id=f"peer.connect.{kind}.free", group="sim", label=f"PEER {name}: sim {text} connects",
            unit="conn/s", higher_is_better=True, key="per_second",
            argv=[exe, f"connect-{kind}", "--count", count] + common))
    return out
