"""Why does MMD (spurcore-baselines' `mmd`) collapse to one class on waterdigits?

Reads finished runs of a sweep (ERM and MMD at each penalty it ran, same seeds) and measures,
on each model's penultimate features of the training split (eval mode), what the training
objective sees: random batches of the training batch size, each attribute value one
environment, as the stage forms them.

- `penalty`: the mean MMD penalty of a batch (the plugin's own `matching_penalty` with
  `mmd_distance`, the biased estimate SubpopBench and DomainBed use);
- `diagonal`: the self-comparisons' part of the biased estimate (every example compared with
  itself, exp(0) = 1 at each of the 7 bandwidths): len(gammas) x (1/n_x + 1/n_y) per pair of
  environments. At a bandwidth where no two distinct examples are within reach of each other
  (gamma x squared distance large), the penalty equals this part; it cancels only as the
  examples move within about 1/sqrt(gamma) of one another, that is, as the features collapse;
- `penalty_per_gamma`: the penalty at each bandwidth on its own;
- `unbiased`: the same penalty with the diagonals left out (the unbiased estimate), for contrast;
- `spread`: the mean squared distance between two training examples' features, and
  `cross_entropy`, the model's training loss without the penalty;
- the class make-up of each environment.

    python benchmarks/mmd_collapse.py --sweep /work/data/base-wd --seeds 0,1,2 \
        [--json docs/results/mmd_collapse.json]

Prints a table; writes JSON {setting: {seed: {...}}}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from spurcore.api import PluginManager, atomic, extract, open_run
from spurcore_baselines.invariance import MMD_GAMMAS, environments, gaussian_kernel, matching_penalty, mmd_distance

BATCHES = 200


def unbiased_mmd(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The squared MMD with each environment's self-comparisons left out."""
    def within(z):
        k = gaussian_kernel(z, z)
        return (k.sum() - k.diagonal().sum()) / (len(z) * (len(z) - 1))
    return within(x) + within(y) - 2 * gaussian_kernel(x, y).mean()


def self_comparisons(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.tensor(len(MMD_GAMMAS) * (1 / len(x) + 1 / len(y)))


def measure(run_dir: Path, manager, batch_size: int, seed: int) -> dict:
    """What the MMD objective sees on `run_dir`'s selected model's training features."""
    run = open_run(run_dir, manager)
    model = run.load_model()
    train = extract(model, run.data, run.device, splits=("train",))["train"]
    features = torch.from_numpy(train.features)
    attributes = torch.from_numpy(np.array(train.a))
    labels = torch.from_numpy(np.array(train.y))
    with torch.no_grad():
        cross_entropy = float(F.cross_entropy(model.head(features.to(run.device.device)).float().cpu(), labels))
    generator = torch.Generator().manual_seed(seed)
    sums: dict[str, float] = {}

    def add(key, value):
        sums[key] = sums.get(key, 0.0) + float(value) / BATCHES

    for _ in range(BATCHES):
        index = torch.randperm(len(features), generator=generator)[:batch_size]
        batch = features[index]
        groups = environments(attributes[index])
        add("penalty", matching_penalty(batch, groups, mmd_distance))
        add("diagonal", matching_penalty(batch, groups, self_comparisons))
        add("unbiased", matching_penalty(batch, groups, unbiased_mmd))
        for gamma in MMD_GAMMAS:
            add(f"gamma={gamma:g}", matching_penalty(batch, groups, lambda x, y, g=gamma: mmd_distance(x, y, (g,))))
        add("spread", torch.cdist(batch, batch).pow(2).mean())
    make_up = {run.data.attr_names[a]: {run.data.class_names[c]: round(float(np.mean(labels[attributes == a].numpy() == c)), 3)
                                        for c in range(len(run.data.class_names))}
               for a in range(len(run.data.attr_names))}
    return {
        "penalty": sums["penalty"], "diagonal": sums["diagonal"], "unbiased": sums["unbiased"],
        "penalty_per_gamma": {f"{g:g}": sums[f"gamma={g:g}"] for g in MMD_GAMMAS},
        "spread": sums["spread"], "cross_entropy": cross_entropy, "environments": make_up,
        "test_worst_group": json.loads((run_dir / "summary.json").read_text())["metrics"]["test"]["worst_group_acc"],
    }


def settings(sweep: Path) -> dict[str, Path]:
    """{"erm": folder, "mmd <setting>": folder} of a sweep's ERM and MMD trials."""
    found = {"erm": sweep / "erm" / "default"}
    for folder in sorted((sweep / "mmd").iterdir()):
        if folder.is_dir():
            found[f"mmd {folder.name}"] = folder
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", type=Path, required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    manager = PluginManager(block=["progress"])
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[str, dict] = {}
    for name, folder in settings(args.sweep).items():
        for seed in seeds:
            run_dir = folder / f"seed{seed}"
            if (run_dir / "summary.json").exists():
                results.setdefault(name, {})[str(seed)] = measure(run_dir, manager, args.batch_size, seed)
    print(f"{'setting':40} {'seed':>4} {'penalty':>8} {'diagonal':>8} {'unbiased':>9} {'spread':>10} {'CE':>6} {'test wga':>8}")
    for name, by_seed in results.items():
        for seed, row in by_seed.items():
            print(f"{name:40} {seed:>4} {row['penalty']:8.3f} {row['diagonal']:8.3f} {row['unbiased']:9.4f} "
                  f"{row['spread']:10.4g} {row['cross_entropy']:6.3f} {100 * row['test_worst_group']:8.1f}")
    if args.json:
        atomic.write_text(args.json, json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
