"""Shared pieces of bench/run: measurements, results, running a benchmark program."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional


@dataclass
class Context:
    root: Path
    build_dir: Path
    smoke: bool
    runs: int
    pins: list[str]          # "one" (every process on CPU 0) and/or "free" (unpinned)
    verbose: bool
    scratch: Path            # short-lived files; AF_UNIX paths must stay short
    load_at_start: float = 0.0
    notes: list[str] = field(default_factory=list)

    def binary(self, name: str) -> Path:
        return self.build_dir / name

    def log(self, message: str) -> None:
        print(f"bench: {message}", file=sys.stderr, flush=True)


@dataclass
class Measurement:
    """One figure: a command that prints a JSON line, run once per round."""
    id: str
    group: str
    label: str
    unit: str
    higher_is_better: bool
    argv: list[str]
    key: str                       # JSON field holding the figure
    pin: str = "free"
    timeout: float = 120.0
    # Optional: turn the parsed JSON into the figure (default: float(obj[key])).
    extract: Optional[Callable[[dict], float]] = None
    # Read the figure from another measurement's JSON of the same round
    # instead of running anything (one program run, several figures).
    derived_from: Optional[str] = None


@dataclass
class Result:
    measurement: Measurement
    values: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    extra: list[dict] = field(default_factory=list)   # every JSON object, for the raw section
    not_measured: Optional[str] = None

    @property
    def ok(self) -> bool:
        return bool(self.values) and not self.errors

    def median(self) -> Optional[float]:
        return statistics.median(self.values) if self.values else None


def pin_prefix(pin: str) -> list[str]:
    return ["taskset", "-c", "0"] if pin == "one" else []


def run_json(argv: list[str], timeout: float, env: Optional[dict] = None, verbose: bool = False) -> dict:
    """Runs a benchmark program; returns its last JSON line. Raises RuntimeError with
    the program's own error text when it fails (e.g. a data mismatch)."""
    if verbose:
        print("bench: $ " + " ".join(argv), file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"timed out after {timeout:.0f} s: {' '.join(argv)}") from exc
    except OSError as exc:
        raise RuntimeError(f"cannot run {argv[0]}: {exc}") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
        raise RuntimeError(f"exit {proc.returncode}: {' '.join(argv)}\n{tail}")
    for line in reversed(proc.stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no JSON result from {' '.join(argv)}")


def run_round(measurements: list[Measurement], results: dict[str, Result], ctx: Context,
              env: Optional[dict] = None) -> None:
    for m in measurements:
        result = results.setdefault(m.id, Result(m))
        if result.errors:          # broken once: do not spend more time on it
            continue
        started = time.monotonic()
        try:
            if m.derived_from:
                source = results.get(m.derived_from)
                if source is None or source.errors or not source.extra:
                    raise RuntimeError(f"{m.derived_from} has no result")
                obj = source.extra[-1]
            else:
                obj = run_json(pin_prefix(m.pin) + m.argv, m.timeout, env, ctx.verbose)
            if obj.get("verified") is False:
                raise RuntimeError(f"data not verified: {obj}")
            value = m.extract(obj) if m.extract else float(obj[m.key])
            result.values.append(value)
            result.extra.append(obj)
            ctx.log(f"{m.id:<34} {value:12.4g} {m.unit:<7} ({time.monotonic() - started:.1f} s)")
        except (RuntimeError, KeyError, ValueError) as exc:
            result.errors.append(str(exc))
            ctx.log(f"{m.id}: FAILED: {exc}")


def mark_not_measured(measurements: list[Measurement], results: dict[str, Result], reason: str) -> None:
    for m in measurements:
        results.setdefault(m.id, Result(m)).not_measured = reason


def fmt_value(value: Optional[float]) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"
