"""Does training from the decoded-image cache change ERM's numbers? ERM on a miniature in the
Waterbirds layout (spurcore_datasets.miniature: the background follows the place, the centre
the bird; a spurious 4:1 majority), once decoding the JPEGs and once from the cache, over
seeds; prints JSON with each run's test worst-group and average accuracy, their means and
standard deviations, and the mean difference cached - files.

    python benchmarks/cache_erm.py [--seeds 0,1,2] [--epochs 2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from rounds import emit, load
from spurcore.api import PluginManager, pipeline_from_dict, run_pipeline
from spurcore_datasets import miniature

COUNTS = {"train": (80, 20, 20, 80), "val": (16,) * 4, "test": (40,) * 4}


def pipeline(root: Path, seed: int, epochs: int, cache_dir: Path | None) -> dict:
    options = {"root": str(root), "image_size": 32}
    if cache_dir is not None:
        options |= {"cache": "decoded", "cache_dir": str(cache_dir)}
    return {"seed": seed, "device": "cpu", "selector": "val-worst-class",
            "dataset": {"name": "waterbirds", "options": options},
            "backbone": {"name": "small-cnn", "options": {"width": 8}},
            "train": {"epochs": epochs, "batch_size": 32, "lr": 1e-3, "train_eval": "none"},
            "stages": [{"method": "erm"}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    plugins = PluginManager(block=["progress"])
    runs: dict[str, list[dict]] = {"files": [], "cached": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        miniature.waterbirds(root, counts=COUNTS, size=(64, 48))
        for seed in (int(s) for s in args.seeds.split(",")):
            for name in runs:
                cache_dir = Path(tmp) / "cache" if name == "cached" else None
                summary = run_pipeline(pipeline_from_dict(pipeline(root, seed, args.epochs, cache_dir)),
                                       Path(tmp) / f"{name}-{seed}", plugins, log=lambda m: None)
                test = summary["metrics"]["test"]
                runs[name].append({"seed": seed, "wga": round(test["worst_group_acc"], 4),
                                   "avg": round(test["avg_acc"], 4)})
    result = {"runs": runs}
    for name, rows in runs.items():
        for key in ("wga", "avg"):
            values = np.array([r[key] for r in rows])
            result[f"{name}_{key}"] = {"mean": round(float(values.mean()), 4), "std": round(float(values.std()), 4)}
    for key in ("wga", "avg"):
        result[f"difference_{key}"] = round(result[f"cached_{key}"]["mean"] - result[f"files_{key}"]["mean"], 4)
    emit({**result, **load()})


if __name__ == "__main__":
    main()
