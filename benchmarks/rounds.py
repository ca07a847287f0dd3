"""Timing rounds for the benchmarks: two contenders alternated (ABBA) in one process, so slow
drift of a shared machine hits both alike, and the spread of the per-round ratios reported
with the median, so a reader sees how far one run of the script can be trusted. Where the
contenders are made of short steps (a training step), `interleave` alternates them step by
step, which leaves a round's ratio to the steps themselves rather than to what the machine
did during one contender's half of the round.

Imported by the scripts beside it (`python benchmarks/x.py` puts this folder on the path).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np


def alternate(rounds: int, first: Callable[[int], float], second: Callable[[int], float]) -> tuple[list[float], list[float]]:
    """Seconds of `first(r)` and `second(r)` for r in range(rounds), in ABBA order; each round
    is printed to stderr as it ends."""
    a, b = [], []
    for r in range(rounds):
        if r % 2 == 0:
            a.append(first(r))
            b.append(second(r))
        else:
            b.append(second(r))
            a.append(first(r))
        print(f"round {r + 1}/{rounds}: {a[-1]:.4f} s and {b[-1]:.4f} s", file=sys.stderr)
    return a, b


def interleave(rounds: int, steps: int, *contenders: Callable[[int], float]) -> tuple[list[float], ...]:
    """Per round, the summed seconds of each contender's `step(k)` for k in range(steps), all
    called in turn at every step, the order rotated by one from step to step and from round to
    round (two contenders: the one going first swapped), so that each goes first, second, ...
    alike; one list of per-round seconds per contender. Each round is printed to stderr as it
    ends."""
    n = len(contenders)
    if n < 2:
        raise ValueError("interleave needs at least two contenders")
    totals: tuple[list[float], ...] = tuple([] for _ in contenders)
    for r in range(rounds):
        sums = [0.0] * n
        for k in range(steps):
            shift = (k + r) % n
            for j in (*range(shift, n), *range(shift)):
                sums[j] += contenders[j](k)
        for total, s in zip(totals, sums):
            total.append(s)
        print(f"round {r + 1}/{rounds}: " + " and ".join(f"{s:.4f} s" for s in sums), file=sys.stderr)
    return totals


def spread(ratios: list[float]) -> dict:
    """The median of per-round ratios, their quartiles and interquartile range, every round."""
    q1, median, q3 = np.percentile(ratios, [25, 50, 75])
    return {"ratio": round(float(median), 4), "iqr": round(float(q3 - q1), 4),
            "q1": round(float(q1), 4), "q3": round(float(q3), 4),
            "round_ratios": [round(float(r), 4) for r in ratios]}


def load() -> dict:
    """The machine's load average when the script ran (1, 5, 15 minutes), for the record."""
    try:
        return dict(zip(("load_1m", "load_5m", "load_15m"), (round(v, 2) for v in os.getloadavg())))
    except OSError:  # pragma: no cover - platforms without getloadavg
        return {}


def emit(result: dict, out: Path | None = None) -> None:
    """Print `result` as indented JSON, and write it to `out` too when given."""
    text = json.dumps(result, indent=2)
    if out:
        Path(out).write_text(text + "\n")
    print(text)
