"""The profile group: user-space instructions the daemon executes per MiB it
moves, counted by valgrind's callgrind, and docs/profile.md with the
functions that account for them.

Each figure is the difference between a large and a small transfer through
the simulated guest, divided by the MiB between them, so start-up, dynamic
linking and the vhost-user handshake cancel out. Kernel work (the copies in
readv/writev) is invisible to callgrind and not included."""
from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from benchlib import Context, Measurement, Result, mark_not_measured, run_json
from local_suite import DAEMON_BINARY, SIM_BINARY

# (direction, write size, ring): packed right after split, so a change in the
# machine between the two shows in neither alone.
CASES = [(d, w, ring) for d, w in [("g2h", "64K"), ("h2g", "64K"), ("g2h", "4K"), ("h2g", "4K")]
         for ring in ("split", "packed")]
NAMES = {"g2h": "guest→host", "h2g": "host→guest"}
LINE = re.compile(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(.+?)\s*$")


def case_id(direction: str, write_size: str, ring: str) -> str:
    """Split keeps the ids of the figures before packed rings existed."""
    return f"profile.{direction}.{write_size.lower()}" + (".packed" if ring == "packed" else "")


def measurements(ctx: Context) -> list[Measurement]:
    """Per case: instructions per MiB, then per packet (every packet on either
    queue: data, credit updates and control, as the daemon handles each)."""
    out = []
    for d, w, ring in CASES:
        text = f"{NAMES[d]}, {w} writes, {ring} ring"
        out.append(Measurement(case_id(d, w, ring), "profile", f"daemon instructions per MiB, {text}",
                               "Ir/MiB", False, [], "ir_per_mib"))
        out.append(Measurement(case_id(d, w, ring) + ".per_packet", "profile",
                               f"daemon instructions per packet, {text}", "Ir/packet", False, [], "ir_per_packet"))
    return out


def sizes_mib(ctx: Context, write_size: str) -> tuple[int, int]:
    if ctx.smoke:
        return 4, 12
    return (16, 144) if write_size == "64K" else (16, 80)


def callgrind_run(ctx: Context, case: tuple[str, str, str], mib: int, out: Path) -> tuple[int, float]:
    """Returns the daemon's instruction total and the packets the guest saw
    (sent and received, whole run)."""
    direction, write_size, ring = case
    wrapper = f"valgrind --tool=callgrind --callgrind-out-file={out}"
    obj = run_json([str(ctx.binary(SIM_BINARY)), "stream", "--direction", direction, "--write-size", write_size,
                    "--bytes", f"{mib}M", "--ring", ring, "--daemon", str(ctx.binary(DAEMON_BINARY)),
                    "--dir", str(ctx.scratch), "--daemon-wrapper", wrapper], timeout=600, verbose=ctx.verbose)
    if obj.get("verified") is not True:
        raise RuntimeError(f"data not verified: {obj}")
    m = re.search(r"^totals:\s*(\d+)", out.read_text(), re.M)
    if not m:
        raise RuntimeError(f"no totals in {out}")
    packets = (obj["packets_to_guest_per_mib"] + obj["packets_from_guest_per_mib"]) * obj["bytes"] / 2**20
    return int(m.group(1)), packets


def cost_by_function(profile: Path, inclusive: bool) -> dict[str, int]:
    """The function summary of callgrind_annotate (not its per-source sections)."""
    text = subprocess.run(["callgrind_annotate", f"--inclusive={'yes' if inclusive else 'no'}", "--threshold=100",
                           "--auto=no", str(profile)], capture_output=True, text=True, check=True).stdout
    out: dict[str, int] = {}
    started = False
    for line in text.splitlines():
        if "file:function" in line:
            started = True
            continue
        if started and line.startswith("-----") and out:
            break
        m = LINE.match(line) if started else None
        if m and not m.group(2).startswith(("=>", "???", "events annotated")):
            name = short_name(m.group(2))
            out[name] = max(out.get(name, 0), int(m.group(1).replace(",", "")))
    return out


def marginal_table(small: Path, large: Path, mib: int, total: float, inclusive: bool) -> list[tuple[str, float, float]]:
    before, after = cost_by_function(small, inclusive), cost_by_function(large, inclusive)
    per_mib = {f: (after[f] - before.get(f, 0)) / mib for f in after}
    rows = [(f, v, 100.0 * v / total if total else 0.0) for f, v in per_mib.items() if v > 0]
    if inclusive:  # the thread and event-loop frames hold everything: say so once, not row by row
        rows = [r for r in rows if r[2] < 99.0]
    return sorted(rows, key=lambda r: -r[1])[:15]


def short_name(raw: str) -> str:
    name = re.sub(r"\s*\[[^\]]*\]$", "", raw)               # the binary in brackets
    name = re.sub(r"^\S*/(src/[^:]+|[^/:]+):", r"\1:", name)  # keep src/... or the file name
    name = name.replace("vhost_vsock::", "")
    return name if len(name) <= 110 else name[:107] + "..."


def run(ctx: Context, results: dict[str, Result], profile_md: Path) -> None:
    ms = measurements(ctx)
    for tool in ("valgrind", "callgrind_annotate"):
        if shutil.which(tool) is None:
            mark_not_measured(ms, results, f"{tool} is not installed")
            return
    work = ctx.scratch / "callgrind"
    work.mkdir(exist_ok=True)
    tables: dict[str, tuple] = {}
    started = time.monotonic()
    for i in range(ctx.runs):  # rounds over all cases, like the other groups
        for case, per_mib, per_packet in zip(CASES, ms[0::2], ms[1::2]):
            r, rp = results.setdefault(per_mib.id, Result(per_mib)), results.setdefault(per_packet.id, Result(per_packet))
            if r.errors:
                continue
            small, large = sizes_mib(ctx, case[1])
            a, b = work / f"{per_mib.id}.{i}.small", work / f"{per_mib.id}.{i}.large"
            try:
                ir_small, packets_small = callgrind_run(ctx, case, small, a)
                ir_large, packets_large = callgrind_run(ctx, case, large, b)
            except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
                r.errors.append(str(exc))
                rp.errors.append(str(exc))
                ctx.log(f"{per_mib.id}: FAILED: {exc}")
                continue
            value = (ir_large - ir_small) / (large - small)
            packets_per_mib = (packets_large - packets_small) / (large - small)
            r.values.append(value)
            r.extra.append({"ir_small": ir_small, "ir_large": ir_large, "mib_small": small, "mib_large": large,
                            "packets_small": packets_small, "packets_large": packets_large})
            rp.values.append(value / packets_per_mib)
            rp.extra.append({"packets_per_mib": packets_per_mib})
            ctx.log(f"{per_mib.id:<34} {value:12.4g} Ir/MiB {value / packets_per_mib:10.4g} Ir/packet")
            if i == ctx.runs - 1:  # the function tables from the last round: marginal Ir per MiB
                try:
                    tables[per_mib.id] = (marginal_table(a, b, large - small, value, True),
                                          marginal_table(a, b, large - small, value, False))
                except (subprocess.CalledProcessError, OSError) as exc:
                    ctx.log(f"{per_mib.id}: no function table: {exc}")
    ctx.log(f"profile group took {time.monotonic() - started:.0f} s")
    if not ctx.smoke and tables:
        write_profile_md(profile_md, ctx, results, tables)


def span(r: Result, digits: int = 0) -> str:
    return f"{statistics.median(r.values):,.{digits}f} ({min(r.values):,.{digits}f}–{max(r.values):,.{digits}f})"


def summary_lines(ctx: Context, results: dict[str, Result]) -> list[str]:
    """Per case and ring: Ir per MiB, packets per MiB, Ir per packet; then packed ÷ split."""
    lines = ["| transfer | ring | instructions per MiB | packets per MiB | instructions per packet | runs |",
             "|---|---|---|---|---|---|"]
    ratios = ["", "Packed ÷ split, same run (ratio of medians; below 1 packed executes fewer instructions):", "",
              "| transfer | per MiB | per packet |", "|---|---|---|"]
    for d, w, ring in CASES:
        r, rp = results.get(case_id(d, w, ring)), results.get(case_id(d, w, ring) + ".per_packet")
        if not (r and r.values and rp and rp.values):
            continue
        packets = statistics.median(o["packets_per_mib"] for o in rp.extra)
        lines.append(f"| {NAMES[d]}, {w} writes | {ring} | {span(r)} | {packets:,.1f} | {span(rp)} | {len(r.values)} |")
        split, split_p = results.get(case_id(d, w, "split")), results.get(case_id(d, w, "split") + ".per_packet")
        if ring == "packed" and split and split.values and split_p and split_p.values:
            ratios.append(f"| {NAMES[d]}, {w} writes | {r.median() / split.median():.3f}× | "
                          f"{rp.median() / split_p.median():.3f}× |")
    return lines + (ratios if len(ratios) > 5 else [])


def write_profile_md(path: Path, ctx: Context, results: dict[str, Result],
                     tables: dict[str, tuple]) -> None:
    version = subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip()
    lines = ["# Profile: where the daemon's instructions go", "",
             "<!-- Generated by `bench/run --only profile` (bench/profile_suite.py); do not edit by hand. -->", "",
             f"Measured with {version} (`--tool=callgrind`) on the daemon while the simulated guest",
             "(`bench/bench_sim stream`) moved data through it, over split and over packed virtqueues",
             "(`--ring packed`, VIRTIO_F_RING_PACKED). Each figure is the difference between a large",
             "and a small transfer divided by the MiB (or packets) between them, so start-up and setup",
             "cancel out and what is left is the steady-state cost. A packet is any packet on either queue",
             "(data, credit updates, control), counted by the simulated guest. Callgrind counts",
             "**user-space instructions only**:",
             "the copies the kernel makes in `readv`/`writev` (most of the real cost) do not appear. Under",
             "valgrind the daemon runs slower than the guest, so its batches are larger than in a native",
             "run; treat the figures as a floor and as a way to compare builds, not as native cost.",
             "Instruction counts do not depend on the machine's load the way times do; the batch sizes",
             "(and so the packets per MiB of credit updates) do a little.", ""]
    lines += summary_lines(ctx, results)
    lines += ["", "In the tables, the thread and event-loop frames that contain everything (≥ 99% inclusive) are",
              "left out; \"self\" is the function's own instructions, without its callees."]
    for m in measurements(ctx)[0::2]:
        if m.id not in tables:
            continue
        inclusive, self_rows = tables[m.id]
        title = m.label.split(", ", 1)[1]
        lines += ["", f"## {title}", "", "Top functions by inclusive instructions per MiB:", "",
                  "| inclusive Ir per MiB | % of total | function |", "|---|---|---|"]
        lines += [f"| {v:,.0f} | {pct:.1f}% | `{name}` |" for name, v, pct in inclusive]
        lines += ["", "Top functions by self instructions per MiB:", "",
                  "| self Ir per MiB | % of total | function |", "|---|---|---|"]
        lines += [f"| {v:,.0f} | {pct:.1f}% | `{name}` |" for name, v, pct in self_rows]
        heap = [(n, v) for n, v, _ in self_rows if re.search(r"malloc|_int_free|\bfree\b|operator new|operator delete", n)]
        if heap:
            lines += ["", "Heap allocation shows up on this path: " + ", ".join(
                f"`{n.split(':', 1)[-1]}` {v:,.0f} Ir/MiB" for n, v in heap) + "."]
    lines += ["", "Reproduce: `bench/run --only profile` (writes this file and the figures in",
              "docs/benchmarks.md), or by hand:", "",
              "```",
              "build/bench/bench_sim stream --direction g2h --write-size 64K --bytes 144M --ring split \\",
              "  --daemon build/vhost-user-vsock --dir /tmp \\",
              "  --daemon-wrapper 'valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out'",
              "callgrind_annotate --inclusive=yes /tmp/cg.out | head -40",
              "```", ""]
    path.write_text("\n".join(lines))
    ctx.log(f"wrote {path}")
