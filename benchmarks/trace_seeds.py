"""Aggregate `spur trace` outputs over seeds: mean ± std of the mean |change| in accuracy
(points) of minority and majority groups, per criterion, intervention, scope and split, and
the sensitive-layer counts of layer rewinding. Prints a markdown table.

    python benchmarks/trace_seeds.py runs/trace/seed0 runs/trace/seed1 runs/trace/seed2
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("trace_dirs", nargs="+", type=Path)
    args = parser.parse_args()
    traces = [json.loads((d / "trace.json").read_text()) for d in args.trace_dirs]
    rows: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for trace in traces:
        for r in trace["summary"]:
            key = (r["criterion"], r["intervention"], r["scope"], r["split"])
            rows[key].append((r["minority_abs"], r["majority_abs"]))
    print(f"{len(traces)} seeds; mean |change| of group accuracy (points) over k = 1, 2, 3\n")
    print("| criterion | intervention | scope | split | minority groups | majority groups |")
    print("|---|---|---|---|---:|---:|")
    for (criterion, intervention, scope, split), values in rows.items():
        minority, majority = np.array(values).T
        print(f"| {criterion} | {intervention} | {scope} | {split} | {minority.mean():.1f} ± {minority.std():.1f} "
              f"| {majority.mean():.1f} ± {majority.std():.1f} |")
    counts: dict[tuple, list[int]] = defaultdict(list)
    for trace in traces:
        sensitive = defaultdict(int)
        for r in trace["rewinding"]["records"]:
            sensitive[(r["group"], r["split"])] += r["abs"] >= trace["rewinding"]["threshold"]
        for key, n in sensitive.items():
            counts[key].append(n)
    print("\nLayer rewinding (5 epochs back): sensitive layers (>= 1 point) per group, mean over seeds\n")
    print("| group | minority | train | test |")
    print("|---|---|---:|---:|")
    minority = {g for t in traces for g in t["minority_groups"]}
    for group in traces[0]["groups"]:
        train, test = (np.mean(counts[(group, s)]) if counts[(group, s)] else float("nan") for s in ("train", "test"))
        print(f"| {group} | {'yes' if group in minority else 'no'} | {train:.1f} | {test:.1f} |")


if __name__ == "__main__":
    main()
