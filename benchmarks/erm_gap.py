"""ERM's gap on waterdigits: test average accuracy minus test worst-group accuracy, over seeds.

Runs `examples/erm.toml` (or any `--pipeline`, e.g. examples/groupdro.toml) once per seed
(resuming finished runs) and prints JSON with every seed's numbers and their mean and
standard deviation, for the README's and the method pages' tables.

    python benchmarks/erm_gap.py [--seeds 0,1,2] [--out runs/erm-gap] [-o key=value ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from spurcore.config import load_pipeline
from spurcore.plugins import PluginManager
from spurcore.runner import run_pipeline

KEYS = ("avg_acc", "worst_group_acc", "worst_class_acc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pipeline", default="examples/erm.toml")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="runs/erm-gap")
    parser.add_argument("-o", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    plugins = PluginManager(block=["progress"])
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        config = load_pipeline(args.pipeline, [*args.overrides, f"seed={seed}"])
        summary = run_pipeline(config, Path(args.out) / f"seed{seed}", plugins, resume=True, log=lambda m: None)
        test = summary["metrics"]["test"]
        row = {"seed": seed, "epoch": summary["selected"]["epoch"], **{k: test[k] for k in KEYS}}
        row["gap"] = test["avg_acc"] - test["worst_group_acc"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    stats = {k: {"mean": float(np.mean([r[k] for r in rows])), "std": float(np.std([r[k] for r in rows]))}
             for k in (*KEYS, "gap")}
    print(json.dumps({"selector": config.selector, "seeds": rows, "summary": stats}, indent=2))


if __name__ == "__main__":
    main()
