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

CASES = [("g2h", "64K"), ("h2g", "64K"), ("g2h", "4K"), ("h2g", "4K")]
NAMES = {"g2h": "guest→host", "h2g": "host→guest"}
LINE = re.compile(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(.+?)\s*$")


def measurements(ctx: Context) -> list[Measurement]:
    return [Measurement(f"profile.{d}.{w.lower()}", "profile", f"daemon instructions per MiB, {NAMES[d]}, {w} writes",
                        "Ir/MiB", False, [], "ir_per_mib") for d, w in CASES]


def sizes_mib(ctx: Context, write_size: str) -> tuple[int, int]:
    if ctx.smoke:
        return 4, 12
    return (16, 144) if write_size == "64K" else (16, 80)


def callgrind_run(ctx: Context, direction: str, write_size: str, mib: int, out: Path) -> int:
    wrapper = f"valgrind --tool=callgrind --callgrind-out-file={out}"
    run_json([str(ctx.binary(SIM_BINARY)), "stream", "--direction", direction, "--write-size", write_size,
              "--bytes", f"{mib}M", "--daemon", str(ctx.binary(DAEMON_BINARY)), "--dir", str(ctx.scratch),
              "--daemon-wrapper", wrapper], timeout=600, verbose=ctx.verbose)
    m = re.search(r"^totals:\s*(\d+)", out.read_text(), re.M)
    if not m:
        raise RuntimeError(f"no totals in {out}")
    return int(m.group(1))


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
    for m, (direction, write_size) in zip(ms, CASES):
        r = results.setdefault(m.id, Result(m))
        small, large = sizes_mib(ctx, write_size)
        try:
            for i in range(ctx.runs):
                a, b = work / f"{m.id}.{i}.small", work / f"{m.id}.{i}.large"
                ir_small = callgrind_run(ctx, direction, write_size, small, a)
                ir_large = callgrind_run(ctx, direction, write_size, large, b)
                value = (ir_large - ir_small) / (large - small)
                r.values.append(value)
                r.extra.append({"ir_small": ir_small, "ir_large": ir_large, "mib_small": small, "mib_large": large})
                ctx.log(f"{m.id:<34} {value:12.4g} Ir/MiB")
            # The function tables from the last pair: marginal Ir per MiB.
            total = r.values[-1]
            tables[m.id] = (marginal_table(a, b, large - small, total, True),
                            marginal_table(a, b, large - small, total, False))
        except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
            r.errors.append(str(exc))
            ctx.log(f"{m.id}: FAILED: {exc}")
    ctx.log(f"profile group took {time.monotonic() - started:.0f} s")
    if not ctx.smoke and tables:
        write_profile_md(profile_md, ctx, results, tables)


def write_profile_md(path: Path, ctx: Context, results: dict[str, Result],
                     tables: dict[str, tuple]) -> None:
    version = subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip()
    lines = ["# Profile: where the daemon's instructions go", "",
             "<!-- Generated by `bench/run --only profile` (bench/profile_suite.py); do not edit by hand. -->", "",
             f"Measured with {version} (`--tool=callgrind`) on the daemon while the simulated guest",
             "(`bench/bench_sim stream`) moved data through it. Each figure is the difference between a large",
             "and a small transfer divided by the MiB between them, so start-up and setup cancel out and what",
             "is left is the steady-state cost per MiB. Callgrind counts **user-space instructions only**:",
             "the copies the kernel makes in `readv`/`writev` (most of the real cost) do not appear. Under",
             "valgrind the daemon runs slower than the guest, so its batches are larger than in a native",
             "run; treat the figures as a floor and as a way to compare builds, not as native cost.", "",
             "| transfer | instructions per MiB (median) | min | max | runs |", "|---|---|---|---|---|"]
    for m in measurements(ctx):
        r = results.get(m.id)
        if r and r.values:
            lines.append(f"| {m.label.split(', ', 1)[1]} | {statistics.median(r.values):,.0f} | "
                         f"{min(r.values):,.0f} | {max(r.values):,.0f} | {len(r.values)} |")
    lines += ["", "In the tables, the thread and event-loop frames that contain everything (≥ 99% inclusive) are",
              "left out; \"self\" is the function's own instructions, without its callees."]
    for m in measurements(ctx):
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
              "build/bench/bench_sim stream --direction g2h --write-size 64K --bytes 144M \\",
              "  --daemon build/vhost-user-vsock --dir /tmp \\",
              "  --daemon-wrapper 'valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out'",
              "callgrind_annotate --inclusive=yes /tmp/cg.out | head -40",
              "```", ""]
    path.write_text("\n".join(lines))
    ctx.log(f"wrote {path}")
