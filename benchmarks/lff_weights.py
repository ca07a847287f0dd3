"""Where Learning from Failure puts its weight: the mean relative difficulty
W = CE_b / (CE_b + CE_d) of each training group, from the per-example moving losses an LfF
stage keeps in its checkpoints, at a few epochs of each run; and the share of the batch loss's
weight each group gets (its count times its mean W, over the sum). Reads the runs, trains
nothing. Prints JSON, one entry per run.

    python benchmarks/lff_weights.py runs/sweep/lff/default/seed0 ... [--epochs 1,2,5,selected,last]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from spurcore.api import open_run
from spurcore.plugins import PluginManager
from spurcore_lff.stage import MovingLoss, relative_difficulty


def group_weights(checkpoint: Path, labels: torch.Tensor, groups: np.ndarray, names: list[str],
                  n_classes: int) -> dict:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["method"]
    losses = {}
    for name in ("biased", "debiased"):
        moving = MovingLoss(labels, n_classes, alpha=0.0)  # alpha plays no part in reading back
        moving.load_state_dict(state[name])
        losses[name] = moving.normalized(torch.arange(len(labels)))
    weight = relative_difficulty(losses["biased"], losses["debiased"]).numpy()
    total = weight.sum()
    return {names[g]: {"count": int((groups == g).sum()), "mean_w": round(float(weight[groups == g].mean()), 4),
                       "share": round(float(weight[groups == g].sum() / total), 4)}
            for g in range(len(names)) if (groups == g).any()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--epochs", default="1,2,5,selected,last")
    args = parser.parse_args()
    plugins = PluginManager(block=["progress"])
    out = []
    for path in args.runs:
        run = open_run(path, plugins)
        stage = run.stage(-1)
        data = run.data
        labels = torch.tensor(np.array(data.splits["train"].y), dtype=torch.long)
        groups = data.groups("train")
        entry = {"run": str(path), "stage": stage.key, "selected": stage.selected, "epochs": {}}
        for epoch in args.epochs.split(","):
            number = run.resolve_epoch(-1, epoch if epoch in ("selected", "last") else int(epoch))
            entry["epochs"][epoch] = {"epoch": number, "groups": group_weights(
                run.out.checkpoint(stage.key, number), labels, groups, list(data.group_names), data.n_classes)}
        out.append(entry)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
