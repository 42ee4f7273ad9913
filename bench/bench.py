"""bench/run: measures the ceiling, the simulated guest, a real VM and its
alternatives in one run, prints a table, writes docs/benchmarks.md + .png.
Run through bench/run (it picks a python3 that has matplotlib)."""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import local_suite  # noqa: E402
import report  # noqa: E402
import profile_suite  # noqa: E402
import vm_suite  # noqa: E402
from benchlib import Context, Result, mark_not_measured, run_round  # noqa: E402
from report import Goal  # noqa: E402

GROUPS = ["ceiling", "sim", "vm", "profile"]
SMOKE_GROUPS = ["ceiling", "sim", "vm"]
# In --smoke, a group that cannot run at all (missing tools, no guest image)
# only fails the run if it is one of these; a group that runs and breaks always does.
SMOKE_REQUIRED = {"ceiling", "sim"}
TARGETS = {
    "ceiling": [local_suite.CEILING_BINARY],
    "sim": [local_suite.SIM_BINARY, local_suite.SCALE_BINARY, local_suite.DAEMON_BINARY],
    "vm": [local_suite.DAEMON_BINARY, vm_suite.XFER_BINARY],
    "profile": [local_suite.SIM_BINARY, local_suite.DAEMON_BINARY],
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help="a few seconds: one small run per figure, data checked, nothing written under docs/")
    p.add_argument("--only", default="",
                   help=f"comma-separated groups out of {','.join(GROUPS)} (default: all; --smoke: ceiling,sim,vm)")
    p.add_argument("--runs", type=int, default=0, help="runs per figure (default 5; --smoke 1)")
    p.add_argument("--pin", default="", help="pinning modes, comma-separated: one (all processes on CPU 0), "
                   "free (unpinned) (default one,free; --smoke free)")
    p.add_argument("--build-dir", default="build", help="CMake build directory (default build)")
    p.add_argument("--no-build", action="store_true", help="do not configure or build; use what is there")
    p.add_argument("--output", default="", help="markdown path (default docs/benchmarks.md; --smoke <build>/bench-smoke.md)")
    p.add_argument("--chart", default="", help="PNG path (default: beside the markdown, benchmarks.png for "
                   "docs/benchmarks.md, else the markdown's name with .png; --smoke none)")
    p.add_argument("--profile-output", default="", help="callgrind summary path, profile group (default: "
                   "profile.md beside the markdown, which links it)")
    p.add_argument("--peer", default="",
                   help="another backend's binary with vhost-device-vsock's CLI (e.g. vhost-device-vsock, or an "
                   "older build of ours): its sim figures are measured in the same rounds and reported as ratios")
    p.add_argument("--peer-name", default="", help="the peer's name in the report (default: its file name)")
    p.add_argument("-v", "--verbose", action="store_true", help="print each command")
    args = p.parse_args()
    args.groups = [g for g in (args.only.split(",") if args.only else (SMOKE_GROUPS if args.smoke else GROUPS)) if g]
    unknown = [g for g in args.groups if g not in GROUPS]
    if unknown:
        p.error(f"unknown group(s) {','.join(unknown)}; choose from {','.join(GROUPS)}")
    args.runs = args.runs or (1 if args.smoke else 5)
    if args.peer:
        args.peer = str(Path(args.peer).resolve())
        if not os.access(args.peer, os.X_OK):
            p.error(f"--peer {args.peer}: not an executable file")
        if "sim" not in args.groups:
            p.error("--peer compares sim figures: select the sim group")
        args.peer_name = args.peer_name or Path(args.peer).name
    args.pins = [x for x in (args.pin or ("free" if args.smoke else "one,free")).split(",") if x]
    if any(x not in ("one", "free") for x in args.pins):
        p.error("--pin takes one and/or free")
    return args


def build(ctx: Context, groups: list[str]) -> dict[str, str]:
    """Configures and builds what the groups need. Returns group -> reason it cannot run."""
    blocked: dict[str, str] = {}
    if not (ctx.build_dir / "build.ninja").exists():
        ctx.log(f"configuring {ctx.build_dir}")
        proc = subprocess.run(["cmake", "-S", str(ctx.root), "-B", str(ctx.build_dir), "-G", "Ninja"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            reason = "cmake configure failed: " + proc.stderr.strip().splitlines()[-1:][0] if proc.stderr else "cmake failed"
            return {g: reason for g in groups}
    proc = subprocess.run(["ninja", "-C", str(ctx.build_dir), "-t", "targets", "all"], capture_output=True, text=True)
    known = {line.split(":")[0] for line in proc.stdout.splitlines()}
    wanted: list[str] = []
    for g in groups:
        missing = [t for t in TARGETS[g] if t not in known]
        if missing:
            blocked[g] = f"build target {', '.join(missing)} is not defined in {ctx.build_dir.name}/"
        else:
            wanted += [t for t in TARGETS[g] if t not in wanted]
    if wanted:
        jobs = os.environ.get("VUV_JOBS", str(os.cpu_count() or 2))
        ctx.log(f"building {' '.join(wanted)}")
        proc = subprocess.run(["ninja", "-C", str(ctx.build_dir), "-j", jobs] + wanted, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stdout[-4000:], file=sys.stderr)
            for g in groups:
                blocked.setdefault(g, "build failed (see the ninja output above)")
    return blocked


def machine_lines(ctx: Context) -> list[str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    except (OSError, AttributeError):
        mem_kib = 0
    compiler, build_type = "unknown", "unknown"
    cache = ctx.build_dir / "CMakeCache.txt"
    if cache.exists():
        text = cache.read_text(errors="replace")
        m = re.search(r"^CMAKE_CXX_COMPILER:\w+=(.*)$", text, re.M)
        if m:
            try:
                compiler = subprocess.run([m.group(1), "--version"], capture_output=True, text=True).stdout.splitlines()[0]
            except (OSError, IndexError):
                compiler = m.group(1)
        m = re.search(r"^CMAKE_BUILD_TYPE:\w+=(.*)$", text, re.M)
        build_type = (m.group(1) if m else "") or "RelWithDebInfo (the project's default)"
    commit = subprocess.run(["git", "-C", str(ctx.root), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    # docs/ is left out: the run itself writes profile.md before this is asked.
    dirty = subprocess.run(["git", "-C", str(ctx.root), "status", "--porcelain", "--untracked-files=no", "--",
                            ".", ":!docs"],
                           capture_output=True, text=True).stdout.strip()
    return [
        f"Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"CPU: {cpu}, {os.cpu_count()} vCPUs (nproc); memory {mem_kib / 1048576:.1f} GiB",
        f"Kernel: {platform.release()}",
        f"Build: {compiler}, CMAKE_BUILD_TYPE={build_type}",
        f"Source: commit {commit}" + (" plus uncommitted changes" if dirty else ""),
        f"Load average (1 min) at start {ctx.load_at_start:.2f}, at end {os.getloadavg()[0]:.2f}: other work on "
        "the machine during the run adds noise",
    ]


def local_goals(pins: list[str]) -> list[Goal]:
    goals: list[Goal] = []
    for pin in pins:
        where = report.PIN_TEXT[pin]
        for direction, name in local_suite.DIRECTIONS:
            for tag, size, target in (("64k", "64 KiB", 0.6), ("4k", "4 KiB", 0.5)):
                goals.append(Goal(f"sim {name} {size} writes, 1 stream ÷ ceiling [{where}]",
                                  f"sim.{direction}.{tag}.1.{pin}", f"ceiling.tput.{tag}.1.{pin}",
                                  target, True, f"≥ {target}×"))
        for direction, name in local_suite.DIRECTIONS:
            for tag, size in (("64k", "64 KiB"), ("4k", "4 KiB")):
                goals.append(Goal(f"sim {name} {size} writes, 8 streams ÷ ceiling 8 streams [{where}]",
                                  f"sim.{direction}.{tag}.8.{pin}", f"ceiling.tput.{tag}.8.{pin}"))
        goals.append(Goal(f"sim 1-byte round trip ÷ ceiling round trip [{where}] (lower is better)",
                          f"sim.rtt.{pin}", f"ceiling.rtt.{pin}", None, False))
        for direction, name in local_suite.DIRECTIONS:
            for tag, size, _ in local_suite.SEQPACKET_SIZES:
                goals.append(Goal(f"sim SOCK_SEQPACKET {name}, {size}-byte messages/s ÷ AF_UNIX SOCK_SEQPACKET [{where}]",
                                  f"sim.seq.{direction}.{tag}.{pin}", f"ceiling.seq.{tag}.{pin}"))
    goals += packed_goals(pins)
    inflight = local_suite.CONNECTS_IN_FLIGHT
    goals.append(Goal(f"sim host-initiated connects per second, {inflight} in flight [unpinned]",
                      f"sim.connect.host.p{inflight}.free", None, 20000, True, "≥ 20,000/s"))
    # The goal is 20,000 connections/s each way.
    goals.append(Goal(f"sim guest-initiated connects per second, {inflight} in flight [unpinned]",
                      f"sim.connect.guest.p{inflight}.free", None, 20000, True, "≥ 20,000/s"))
    for kind, text in (("host", "host"), ("guest", "guest")):
        goals.append(Goal(f"sim {text}-initiated connects per second, one at a time (handshake latency across "
                          "three processes, not capacity) [unpinned]", f"sim.connect.{kind}.free", None))
    return goals


def packed_goals(pins: list[str]) -> list[Goal]:
    """Packed ÷ split virtqueues, sim and callgrind, same run (no target: where
    each layout wins is the finding)."""
    goals: list[Goal] = []
    for pin in pins:
        where = report.PIN_TEXT[pin]
        for direction, name in local_suite.DIRECTIONS:
            for tag, size in (("64k", "64 KiB"), ("4k", "4 KiB")):
                goals.append(Goal(f"sim packed ÷ split virtqueues, {name} {size} writes, 1 stream [{where}]",
                                  f"sim.{direction}.{tag}.1.{pin}.packed", f"sim.{direction}.{tag}.1.{pin}"))
        goals.append(Goal(f"sim packed ÷ split virtqueues, 1-byte round trip [{where}] (lower is better)",
                          f"sim.rtt.{pin}.packed", f"sim.rtt.{pin}", None, False))
    for direction, name in local_suite.DIRECTIONS:
        for tag, size in (("64k", "64 KiB"), ("4k", "4 KiB")):
            for per, unit in (("", "per MiB"), (".per_packet", "per packet")):
                goals.append(Goal(f"callgrind packed ÷ split, daemon instructions {unit}, {name} {size} writes "
                                  "(lower is better)", f"profile.{direction}.{tag}.packed{per}",
                                  f"profile.{direction}.{tag}{per}", None, False))
    return goals


def peer_goals(pins: list[str], name: str) -> list[Goal]:
    """Ours ÷ the peer backend, same figure, same rounds."""
    goals: list[Goal] = []
    for pin in pins:
        where = report.PIN_TEXT[pin]
        for direction, text in local_suite.DIRECTIONS:
            for tag, size in (("64k", "64 KiB"), ("4k", "4 KiB")):
                goals.append(Goal(f"ours ÷ {name}: sim {text} {size} writes, 1 stream [{where}]",
                                  f"sim.{direction}.{tag}.1.{pin}", f"peer.{direction}.{tag}.1.{pin}"))
        goals.append(Goal(f"ours ÷ {name}: sim 1-byte round trip [{where}] (lower is better)",
                          f"sim.rtt.{pin}", f"peer.rtt.{pin}", None, False))
    for kind, text in (("host", "host-initiated"), ("guest", "guest-initiated")):
        goals.append(Goal(f"ours ÷ {name}: sim {text} connects per second [unpinned]",
                          f"sim.connect.{kind}.free", f"peer.connect.{kind}.free"))
    return goals


def vm_goals() -> list[Goal]:
    goals = []
    # Issue 14: at least as fast as a virtio-serial port, twice user networking.
    for alt, name, target in (("net", "virtio-net (user net)", 2.0), ("serial", "virtio-serial", 1.0)):
        for direction, text in local_suite.DIRECTIONS:
            goals.append(Goal(f"VM vsock ÷ {name}, {text} throughput", f"vm.vsock.{direction}",
                              f"vm.{alt}.{direction}", target, True, f"≥ {target:g}×"))
    goals.append(Goal("VM vsock ÷ virtio-net (user net), 1-byte round trip (lower is better)", "vm.vsock.rtt",
                      "vm.net.rtt", 0.7, False, "≤ 0.7×"))
    goals.append(Goal("VM vsock ÷ virtio-serial, 1-byte round trip (lower is better)", "vm.vsock.rtt",
                      "vm.serial.rtt", None, False))
    goals.append(Goal("VM vsock ÷ virtio-net (user net), host-initiated connects per second", "vm.vsock.connect",
                      "vm.net.connect"))
    # Packed against split virtqueues, same run (no target: where each wins is the finding).
    for row, text, higher in (("g2h", "guest→host throughput", True), ("h2g", "host→guest throughput", True),
                              ("rtt", "1-byte round trip (lower is better)", False),
                              ("connect", "host-initiated connects per second", True)):
        goals.append(Goal(f"VM vsock packed ÷ split virtqueues, {text}", f"vm.vsock_packed.{row}", f"vm.vsock.{row}",
                          None, higher))
    return goals


METHOD = [
    "Run `bench/run` from the repository root (it configures and builds what it needs in `build/`,",
    "or `--build-dir DIR`); `bench/run --smoke` is the few-seconds check CI runs (one small run per",
    "figure, data verified, nothing under docs/ touched, non-zero exit only when something is broken);",
    "`bench/run --only ceiling,sim` (groups: ceiling, sim, vm, profile), `--runs N`, `--pin one,free`.",
    "Sections under a `" + report.HAND_WRITTEN_MARK.split(":")[0] + "` line are written by hand",
    "(separate experiments); `bench/run` keeps them after the results until they are deleted.",
    "`--peer PATH` adds the same sim figures for another backend with vhost-device-vsock's command line",
    "(`--guest-cid`, `--socket`, `--uds-path` only), each run right beside ours in every round (first in one",
    "round, second in the next), and reports ours ÷ peer. Ours also gets `--log-level warn` and",
    "`--max-connections`; the peer runs with its own defaults.",
    "",
    "- **ceiling** (`bench/unix_ceiling.cpp`): a `socketpair(AF_UNIX, SOCK_STREAM)` between two processes",
    "  (fork). The child writes a deterministic pattern in 4 KiB or 64 KiB writes; the parent reads with",
    "  the same size and compares every byte with the pattern (position-dependent, period 1 MiB + 7, so",
    "  lost, duplicated or reordered bytes are caught). 8 streams: 8 socketpairs served with `poll`.",
    "  Round trip: 1 byte sent and echoed back, mean of 20,000 after 100 warm-up round trips.",
    "- **sim** (`bench/sim_bench.cpp`): the real daemon (`build/vhost-user-vsock`) driven by the in-process",
    "  guest simulator of `src/testing/` (vhost-user front-end + virtio-vsock driver on memfd memory) in",
    "  the benchmark process, and a forked host process on the AF_UNIX side; so the same three hops as",
    "  production, with the simulator standing in for the guest kernel. The same pattern and checks as",
    "  the ceiling. Guest→host: the guest sends, the host peer (listening on `<uds>_<port>`) reads;",
    "  host→guest: the host peer connects through `CONNECT <port>` and writes, the guest reads.",
    "  Round trip: the host sends 1 byte, the guest echoes it. Connects: host peers doing",
    "  CONNECT→OK→close, and guest REQUEST→RESPONSE→close, each checked, one at a time (the",
    "  latency of one handshake across three processes) and 16 in flight (`--parallel 16`: what the",
    "  daemon can take; the 20,000/s goal, each way, is on these rows). Memory: `VmRSS`",
    "  of the daemon from `/proc/<pid>/status` with N idle host-initiated connections open, and its",
    "  growth over the RSS before them divided by N (user-space memory only: the kernel's socket",
    "  buffers are not in VmRSS).",
    "  The daemon runs with `--log-level warn` (no per-connection info lines).",
    "  **Packed virtqueues**: the 1-stream throughput rows and the round trip run a second time with",
    "  the simulator driving packed rings (`bench_sim --ring packed`: VIRTIO_F_RING_PACKED negotiated",
    "  as QEMU's `packed=on` does), right after the split row in each round; packed ÷ split is",
    "  reported with the goals, without a target.",
    "- **vm** (`bench/vm_suite.py`): the e2e guest (`scripts/guest-image.sh`: Debian's 6.1 kernel, busybox",
    "  initramfs) booted by `scripts/vm.py` under QEMU with the daemon as `vhost-user-vsock-pci`, 1 vCPU.",
    "  The **alternatives** run on the same VM in the same rounds: virtio-net with QEMU user networking",
    "  (`-netdev user` with `hostfwd` for host→guest, a guest connection to 10.0.2.2 for guest→host) and",
    "  a virtio-serial port on a Unix socket chardev. Every transfer runs `bench/guest/xfer.c` on both",
    "  sides (same pattern check as above, 64 KiB writes); the host side times it: from the go byte it",
    "  sends until the last byte (guest→host), or from its first write until the guest's ack after the",
    "  last byte verified (host→guest). vsock and virtio-serial move 256 MiB each, user networking",
    "  128 MiB. Round trip: 1 byte echoed by the guest, mean of 2,000. Around each vsock transfer the",
    "  daemon's counters (its `--metrics` endpoint and /proc) are read: the VM rows of the event table.",
    "  Connects: the host connects, reads the 1-byte greeting the guest sends on accept, closes (500).",
    "  The serial port has no connections, so no connect figure.",
    "- **profile** (`bench/profile_suite.py`): callgrind instruction counts of the daemon per MiB and",
    "  per packet, split and packed rings;",
    "  details and the function tables in [profile.md](profile.md).",
    "- **Pinning**: *all on CPU 0* runs every process of a figure (`taskset -c 0`) on one CPU, so",
    "  throughput is the inverse of the total CPU cost per byte (steady, compares work done);",
    "  *unpinned* lets the scheduler use both vCPUs (what a deployment sees, noisier). The VM group",
    "  is unpinned (QEMU's TCG thread, the daemon and the host peer share both vCPUs).",
]


def main() -> int:
    args = parse_args()
    root = Path(__file__).resolve().parent.parent
    os.chdir(root)
    build_dir = (root / args.build_dir).resolve()
    scratch = Path(tempfile.mkdtemp(prefix="vuvb.", dir="/tmp"))
    ctx = Context(root=root, build_dir=build_dir, smoke=args.smoke, runs=args.runs, pins=args.pins,
                  verbose=args.verbose, scratch=scratch, load_at_start=os.getloadavg()[0])
    try:
        return run(ctx, args)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def beside_peer(measurements: list, round_index: int) -> list:
    """Each --peer figure runs right beside ours (sim.X and peer.X), first in
    one round and second in the next: the machine's speed drifts during a
    round, and a peer run at the round's end would compare different moments."""
    peers = {m.id: m for m in measurements if m.id.startswith("peer.")}
    ordered = []
    for m in measurements:
        if m.id.startswith("peer."):
            continue
        partner = peers.pop("peer." + m.id.removeprefix("sim."), None) if m.id.startswith("sim.") else None
        if partner is None:
            ordered.append(m)
        else:
            ordered += [partner, m] if round_index % 2 else [m, partner]
    return ordered + list(peers.values())


def run(ctx: Context, args: argparse.Namespace) -> int:
    blocked = {} if args.no_build else build(ctx, args.groups)
    results: dict[str, Result] = {}
    local = []
    if "ceiling" in args.groups:
        local += local_suite.ceiling_measurements(ctx)
    if "sim" in args.groups:
        local += local_suite.sim_measurements(ctx)
        if args.peer:
            local += local_suite.peer_measurements(ctx, args.peer, args.peer_name)
    for m in local:
        reason = blocked.get(m.group)
        if reason is None and m.argv and not Path(m.argv[0]).exists():
            reason = f"{Path(m.argv[0]).relative_to(ctx.root) if m.argv[0].startswith(str(ctx.root)) else m.argv[0]} not built"
        if reason:
            mark_not_measured([m], results, reason)
    runnable = [m for m in local if m.id not in results]
    for round_index in range(ctx.runs if runnable else 0):
        ctx.log(f"round {round_index + 1}/{ctx.runs}")
        run_round(beside_peer(runnable, round_index), results, ctx)

    if "vm" in args.groups:
        if "vm" in blocked:
            mark_not_measured(vm_suite.measurements(ctx), results, blocked["vm"])
        else:
            try:
                vm_suite.run(ctx, results)
            except RuntimeError as exc:
                ctx.log(f"VM group stopped: {exc}")

    if "profile" in args.groups:
        if "profile" in blocked:
            mark_not_measured(profile_suite.measurements(ctx), results, blocked["profile"])
        else:
            profile_suite.run(ctx, results, profile_path(ctx, args))

    goals = local_goals(ctx.pins) + vm_goals() + (peer_goals(ctx.pins, args.peer_name) if args.peer else [])
    # Goals whose figures belong to groups not selected are left out, not listed as missing.
    outcomes = [report.evaluate(g, results) for g in goals
                if g.ours in results and (g.reference is None or g.reference in results)]
    report.print_tables(results, outcomes)

    out_md = markdown_path(ctx, args)
    # A report written elsewhere must not overwrite the committed chart.
    chart_path = Path(args.chart) if args.chart else (None if args.smoke else out_md.with_suffix(".png"))
    notes = list(ctx.notes)
    chart_rel = None
    if chart_path:
        machine = machine_lines(ctx)
        error = report.write_chart(chart_path, results, outcomes,
                                   title=f"{machine[0]}; {machine[1]}; bench/run, one run, ratios paired in time")
        if error:
            notes.append(error)
        else:
            chart_rel = os.path.relpath(chart_path, out_md.parent)
    command = "bench/run" + ("" if len(sys.argv) == 1 else " " + " ".join(sys.argv[1:]))
    out_md.parent.mkdir(parents=True, exist_ok=True)
    report.write_markdown(out_md, machine=machine_lines(ctx), command=command, method=METHOD, results=results,
                          outcomes=outcomes, chart=chart_rel, notes=notes, pins=ctx.pins)
    ctx.log(f"wrote {out_md}" + (f" and {chart_path}" if chart_rel else ""))

    broken = [r.measurement.id for r in results.values() if r.errors]
    if broken:
        ctx.log(f"BROKEN: {', '.join(broken)}")
        return 1
    if args.smoke:
        skipped = sorted({r.measurement.group for r in results.values() if r.not_measured} & SMOKE_REQUIRED)
        if skipped:
            ctx.log(f"smoke: group(s) {', '.join(skipped)} could not run")
            return 1
    return 0


def root_path(ctx: Context, rel: str) -> Path:
    return ctx.root / rel


def markdown_path(ctx: Context, args) -> Path:
    if args.output:
        return Path(args.output)
    return ctx.build_dir / "bench-smoke.md" if args.smoke else root_path(ctx, "docs/benchmarks.md")


def profile_path(ctx: Context, args) -> Path:
    """Beside the report, whose text links it as profile.md."""
    return Path(args.profile_output) if args.profile_output else markdown_path(ctx, args).parent / "profile.md"


if __name__ == "__main__":
    sys.exit(main())
