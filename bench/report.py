"""Turns results into the printed table, docs/benchmarks.md and the PNG chart."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import bounds
from benchlib import Result, fmt_value


@dataclass
class Goal:
    """ours ÷ reference (or, without a reference, an absolute figure) against a target."""
    label: str
    ours: str
    reference: Optional[str]
    target: Optional[float] = None
    at_least: bool = True          # met when value >= target (else value <= target)
    target_text: str = ""


@dataclass
class GoalOutcome:
    goal: Goal
    value: Optional[float]
    low: Optional[float]           # range of the per-round ratios (paired in time)
    high: Optional[float]
    status: str


def evaluate(goal: Goal, results: dict[str, Result]) -> GoalOutcome:
    ours = results.get(goal.ours)
    ref = results.get(goal.reference) if goal.reference else None
    if ours is None or (goal.reference and ref is None):
        return GoalOutcome(goal, None, None, None, "not measured (group not selected)")
    for r in (ours, ref):
        if r is None:
            continue
        if r.not_measured:
            return GoalOutcome(goal, None, None, None, f"not measured: {r.not_measured}")
        if r.errors:
            return GoalOutcome(goal, None, None, None, f"failed: {r.measurement.id}")
        if not r.values:
            return GoalOutcome(goal, None, None, None, "not measured")
    if ref is None:
        value, low, high = ours.median(), min(ours.values), max(ours.values)
    else:
        value = ours.median() / ref.median()
        paired = [a / b for a, b in zip(ours.values, ref.values) if b]
        low, high = (min(paired), max(paired)) if paired else (None, None)
    if goal.target is None:
        status = "-"
    else:
        met = value >= goal.target if goal.at_least else value <= goal.target
        status = "met" if met else "not met"
    return GoalOutcome(goal, value, low, high, status)


def fmt_ratio(outcome: GoalOutcome) -> str:
    if outcome.value is None:
        return "-"
    unit = "" if outcome.goal.reference is None else "×"
    text = f"{fmt_value(outcome.value)}{unit}"
    if outcome.low is not None and outcome.high is not None and outcome.goal.reference is not None:
        text += f" ({outcome.low:.2f}–{outcome.high:.2f})"
    return text


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


PIN_TEXT = {"one": "all on CPU 0", "free": "unpinned"}


def result_rows(results: dict[str, Result]) -> list[list[str]]:
    rows = []
    for r in results.values():
        m = r.measurement
        if r.not_measured:
            rows.append([m.group, m.label, PIN_TEXT.get(m.pin, m.pin), "-", "-", "-", "0", m.unit,
                         f"not measured: {r.not_measured}"])
        elif r.errors:
            rows.append([m.group, m.label, PIN_TEXT.get(m.pin, m.pin), "-", "-", "-", str(len(r.values)), m.unit,
                         "FAILED: " + r.errors[0].splitlines()[0]])
        elif not r.values:
            rows.append([m.group, m.label, PIN_TEXT.get(m.pin, m.pin), "-", "-", "-", "0", m.unit,
                         "not measured (an earlier failure stopped its group)"])
        else:
            rows.append([m.group, m.label, PIN_TEXT.get(m.pin, m.pin), fmt_value(r.median()),
                         fmt_value(min(r.values)), fmt_value(max(r.values)), str(len(r.values)), m.unit, ""])
    return rows


CPU_LABELS = {"cpu_writer_s": "writer", "cpu_reader_s": "reader", "cpu_guest_sim_s": "guest simulator",
              "cpu_daemon_s": "daemon", "cpu_host_peer_s": "host peer", "cpu_qemu_s": "QEMU (guest + devices)"}


def cpu_rows(results: dict[str, Result]) -> list[list[str]]:
    """CPU seconds per GiB moved, per process (median over runs), for every
    throughput figure whose program reported its CPU time."""
    import statistics
    rows = []
    for r in results.values():
        objs = [o for o in r.extra if "bytes" in o and any(k in o for k in CPU_LABELS)]
        if not objs or r.errors:
            continue
        parts = []
        total = []
        for key, label in CPU_LABELS.items():
            per_gib = [o[key] / (o["bytes"] / 2**30) for o in objs if key in o and o["bytes"]]
            if per_gib:
                parts.append(f"{label} {statistics.median(per_gib):.3f}")
        for o in objs:
            total.append(sum(o[k] for k in CPU_LABELS if k in o) / (o["bytes"] / 2**30))
        daemon = [o["cpu_daemon_s"] / (o["bytes"] / 2**30) for o in objs if "cpu_daemon_s" in o]
        rows.append([r.measurement.label, PIN_TEXT.get(r.measurement.pin, r.measurement.pin),
                     f"{statistics.median(total):.3f}", f"{statistics.median(daemon):.3f}" if daemon else "-",
                     ", ".join(parts)])
    return rows


def print_tables(results: dict[str, Result], outcomes: list[GoalOutcome]) -> None:
    rows = result_rows(results)
    headers = ["group", "figure", "pinning", "median", "min", "max", "runs", "unit", "note"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    widths[-1] = min(widths[-1], 60)
    print()
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    for row in rows:
        print("  ".join(c[:w].ljust(w) for c, w in zip(row, widths)))
    if outcomes:
        print()
        width = max(len(o.goal.label) for o in outcomes)
        print(f"{'goal':<{width}}  {'measured':<22} {'target':<12} status")
        for o in outcomes:
            print(f"{o.goal.label:<{width}}  {fmt_ratio(o):<22} {o.goal.target_text or '-':<12} {o.status}")
    print()


# A "## " section of docs/benchmarks.md whose body holds this line was written
# by hand (a separate experiment, a finding): write_markdown keeps it, after
# the results table, until someone deletes it.
HAND_WRITTEN_MARK = "<!-- hand-written: bench/run keeps this section; delete it by hand when it is stale -->"


def hand_written_sections(path: Path) -> list[str]:
    """The hand-written sections of the file being replaced, in their order."""
    if not path.exists():
        return []
    kept: list[str] = []
    section: list[str] = []
    for line in path.read_text().splitlines() + ["## (end)"]:
        if line.startswith("## "):
            if any(HAND_WRITTEN_MARK in s for s in section):
                while section and not section[-1].strip():
                    section.pop()
                kept += [""] + section
            section = []
        section.append(line)
    return kept


def write_markdown(path: Path, *, machine: list[str], command: str, method: list[str],
                   results: dict[str, Result], outcomes: list[GoalOutcome], chart: Optional[str],
                   notes: list[str], pins: Optional[list[str]] = None) -> None:
    hand_written = hand_written_sections(path)
    lines = ["# Benchmarks", "",
             f"<!-- Generated by `{command}`; edit bench/ instead of this file. -->", "",
             "## Machine", ""]
    lines += [f"- {item}" for item in machine]
    lines += ["", "This is a small, shared, noisy VM: absolute figures move by tens of percent",
              "between runs and days. Compare **ratios measured in the same run**: every",
              "figure below comes from one invocation of the command above, with the groups",
              "interleaved round by round so that slow and fast periods hit both sides of a ratio.",
              "Each figure is the median of the runs, with the minimum and maximum beside it;",
              "a ratio is the ratio of medians, with the range of the per-round ratios in brackets.",
              ""]
    if chart:
        lines += [f"![throughput and ratios]({chart})", ""]
    lines += ["## Goals", ""]
    lines += table(["goal", "measured", "target", "status"],
                   [[o.goal.label, fmt_ratio(o), o.goal.target_text or "-", o.status] for o in outcomes])
    lines += ["", "The targets are goals, not assertions: `bench/run` never fails on speed, only",
              "on broken data or a benchmark that cannot run.", "", "## Results", ""]
    lines += table(["group", "figure", "pinning", "median", "min", "max", "runs", "unit", "note"],
                   result_rows(results))
    lines += hand_written
    cpu = cpu_rows(results)
    if cpu:
        lines += ["", "## CPU per GiB moved", "",
                  "CPU seconds (user + system, from `getrusage` and `/proc/<pid>/stat`) each process spent per GiB",
                  "during the timed part, median of the runs. This splits a sim figure into the daemon's share and",
                  "the simulator's (which stands in for a guest kernel and is not tuned), and compares the daemon",
                  "alone with the whole ceiling. /proc counts in clock ticks (10 ms), so small figures are coarse.", ""]
        lines += table(["figure", "pinning", "total s/GiB", "daemon s/GiB", "by process (s/GiB)"], cpu)
    events = bounds.event_rows(results)
    if events:
        lines += [""] + bounds.section(results, pins or ["free"])
        lines += table(bounds.event_table_headers(), events)
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    lines += ["", "## Method", ""] + method
    lines += ["", "## Raw runs", "", "<details><summary>every run's figure</summary>", ""]
    for r in results.values():
        if r.values:
            lines.append(f"- `{r.measurement.id}` ({r.measurement.unit}): "
                         + ", ".join(f"{v:.4g}" for v in r.values))
    lines += ["", "</details>", ""]
    path.write_text("\n".join(lines))


def write_chart(path: Path, results: dict[str, Result], outcomes: list[GoalOutcome], title: str) -> Optional[str]:
    """Throughput bars (median, min-max whiskers) and the goal ratios. Returns an
    error string instead of raising when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no chart"

    bars = [r for r in results.values() if r.values and not r.errors and r.measurement.unit == "Gbit/s"]
    ratio_rows = [o for o in outcomes if o.value is not None and o.goal.reference is not None]
    fig, axes = plt.subplots(1, 2, figsize=(15, max(5, 0.32 * max(len(bars), len(ratio_rows)) + 1.5)),
                             gridspec_kw={"width_ratios": [3, 2]})
    ax = axes[0]
    if bars:
        labels = [f"{r.measurement.label} [{PIN_TEXT.get(r.measurement.pin, r.measurement.pin)}]" for r in bars]
        medians = [r.median() for r in bars]
        low = [m - min(r.values) for m, r in zip(medians, bars)]
        high = [max(r.values) - m for m, r in zip(medians, bars)]
        palette = {"ceiling": "#7f7f7f", "sim": "#1f77b4", "vm": "#2ca02c", "alt": "#ff7f0e"}
        colors = [palette.get(r.measurement.group, "#9467bd") for r in bars]
        y = list(range(len(bars)))
        ax.barh(y, medians, xerr=[low, high], color=colors, capsize=3)
        ax.set_yticks(y, labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("Gbit/s, log scale (median of runs; whiskers: min–max)")
        ax.set_title("Throughput")
        ax.grid(axis="x", alpha=0.3)
    else:
        ax.text(0.5, 0.5, "no throughput measured", ha="center")
    ax = axes[1]
    if ratio_rows:
        y = list(range(len(ratio_rows)))
        values = [o.value for o in ratio_rows]
        colors = ["#2ca02c" if o.status == "met" else "#d62728" if o.status == "not met" else "#1f77b4"
                  for o in ratio_rows]
        # Lollipops from 1×: on a log axis a bar from 0 means nothing.
        ax.hlines(y, 1.0, values, colors=colors, lw=3)
        ax.scatter(values, y, color=colors, zorder=3)
        for i, o in enumerate(ratio_rows):
            if o.goal.target is not None:
                ax.plot([o.goal.target, o.goal.target], [i - 0.4, i + 0.4], color="black", lw=2)
        ax.set_yticks(y, [o.goal.label for o in ratio_rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.axvline(1.0, color="grey", lw=1)
        ax.set_xlabel("ratio, log scale; black tick: target\ngreen: met, red: not met, blue: no target")
        ax.set_title("Ours ÷ reference")
        ax.grid(axis="x", alpha=0.3)
    else:
        ax.text(0.5, 0.5, "no ratios measured", ha="center")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
