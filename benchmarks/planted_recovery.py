"""How well each tracer criterion recovers planted memorization, against a random control.

For every seed and kind of planting (spurcore-planted: a few training examples relabelled, with
or without a trigger patch of their own), fit a `planted-mlp` until it fits every training
example (`memorizer`), then for each planted example zero the top share of hidden neurons that
the gradient criterion (its own loss) or the magnitude criterion picks, and as many random ones,
and measure the training accuracy removed from it and from the others (`recover`). Prints one
JSON line per measurement, then a markdown table: mean ± std over seeds of the drops, in points.

    python benchmarks/planted_recovery.py [--seeds 0,1,2] [--n-train 400] [--planted 8] \
        [--kinds patch,relabel] [--shares 0.1,0.3] [--out results.json]

docs/methods/planted-memorization.md.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from spurcore_planted import PlantedOptions, make_planted, memorizer, planted_mask, recover

CRITERIA = ("gradient", "magnitude")


def _numbers(text: str, kind=float) -> list:
    return [kind(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--n-train", type=int, default=400)
    parser.add_argument("--planted", type=int, default=8)
    parser.add_argument("--kinds", default="patch,relabel")
    parser.add_argument("--shares", default="0.1,0.3")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    records = []
    for kind in args.kinds.split(","):
        for seed in _numbers(args.seeds, int):
            start = time.perf_counter()
            data = make_planted(PlantedOptions(n_train=args.n_train, planted=args.planted, kind=kind, seed=seed))
            model = memorizer(data, seed, hidden=args.hidden)
            for criterion in CRITERIA:
                for share in _numbers(args.shares):
                    found = recover(model, data.splits["train"], planted_mask(data), criterion, share, seed=seed)
                    record = {"kind": kind, "seed": seed, "share": share, "n_train": args.n_train,
                              "planted": args.planted, "hidden": args.hidden, **found.as_dict(),
                              "seconds": round(time.perf_counter() - start, 2)}
                    records.append(record)
                    print(json.dumps(record), flush=True)
    print()
    print(table(records))
    if args.out:
        args.out.write_text(json.dumps(records, indent=1))
    return records


def table(records: list[dict]) -> str:
    """Mean ± std over seeds of the drops, per kind, criterion and share."""
    rows = defaultdict(list)
    for r in records:
        rows[(r["kind"], r["criterion"], r["share"], r["k"])].append(
            (r["planted_drop"], r["others_drop"], r["control_planted_drop"], r["control_others_drop"]))
    lines = ["| planting | criterion | share (k) | planted: drop | others: drop | control, planted: drop | "
             "control, others: drop | seeds |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for (kind, criterion, share, k), values in rows.items():
        values = np.array(values)
        cells = " | ".join(f"{m:.1f} ± {s:.1f}" for m, s in zip(values.mean(0), values.std(0)))
        lines.append(f"| {kind} | {criterion} | {share:g} ({k}) | {cells} | {len(values)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
