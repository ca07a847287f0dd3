"""ERM's gaps on a pipeline, over seeds: test average minus test worst-group accuracy, and the
memorization regime's two properties (docs/methods/memorization-regime.md) at the epoch the
pipeline's selector chose: training accuracy >= 99% in every group, and the worst test group
at least 15 points below its own training accuracy.

Runs `examples/erm.toml` (or any `--pipeline`, e.g. examples/memorization/erm.toml) once per
seed (resuming finished runs) and prints JSON with every seed's numbers and their mean and
standard deviation, for the README's and the method pages' tables.

    python benchmarks/erm_gap.py [--pipeline P] [--seeds 0,1,2] [--out runs/erm-gap] [-o key=value ...]
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
INTERPOLATES = 0.99  # training accuracy every group must reach
MEMORIZATION_GAP = 0.15  # the worst test group's distance below its own training accuracy


def regime(metrics: dict) -> dict:
    """The regime's properties of one model, from its summary metrics (train and test)."""
    train, test = metrics["train"]["group_acc"], metrics["test"]["group_acc"]
    worst = min(test, key=lambda g: test[g])
    return {
        "train_group_acc": train, "test_group_acc": test,
        "min_train_group_acc": min(train.values()), "worst_test_group": worst,
        "worst_test_group_gap": train[worst] - test[worst],
        "interpolates": min(train.values()) >= INTERPOLATES,
        "memorizes": train[worst] - test[worst] >= MEMORIZATION_GAP,
    }


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
        summary = run_pipeline(config, Path(args.out) / f"seed{seed}", plugins, resume="auto", log=lambda m: None)
        test = summary["metrics"]["test"]
        row = {"seed": seed, "epoch": summary["selected"]["epoch"], **{k: test[k] for k in KEYS}}
        row["gap"] = test["avg_acc"] - test["worst_group_acc"]
        if "train" in summary["metrics"]:
            row.update(regime(summary["metrics"]))
        rows.append(row)
        print(json.dumps(row), flush=True)
    stats = {k: {"mean": float(np.mean([r[k] for r in rows])), "std": float(np.std([r[k] for r in rows]))}
             for k in (*KEYS, "gap", "min_train_group_acc", "worst_test_group_gap") if k in rows[0]}
    print(json.dumps({"pipeline": args.pipeline, "selector": config.selector, "seeds": rows, "summary": stats,
                      "regime_holds": all(r.get("interpolates") and r.get("memorizes") for r in rows)}, indent=2))


if __name__ == "__main__":
    main()
