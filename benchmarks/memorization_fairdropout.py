"""Did FairDropout's example-tied masks move memorization? Feldman's per-example scores of the
same training examples under ERM and under FairDropout, the latter read with its memorizing
units dropped (how FairDropout predicts) and kept (the paper's check).

It reads two finished `spur memorization` folders with the same settings and seeds, e.g.

    spur memorization examples/memorization/erm.toml --out runs/mem-regime --epochs 20 --seeds 0,1,2 --jobs 2
    spur memorization examples/memorization/fairdropout.toml --out runs/mem-regime-fd --epochs 20 --seeds 0 --jobs 2

Model k of seed s has pipeline seed `s * 1000 + k` in both, so the two methods' models trained
on the same subsets (checked here, example by example): the scores are paired. The dropped
scores are those `spur memorization` wrote; for the kept ones each FairDropout model is opened
again, switched to inference mode "keep" (`spurcore_fairdropout.set_inference_mode`) and
predicts the training split. Writes JSON (per group and for ERM's most memorized examples:
mean score, its standard error, accuracy trained on / held out, under each of the three) and
a figure; prints a markdown table. The most memorized examples are chosen by ERM's scores on
its other seeds when the ERM folder has them (`most_memorized`), so that the choice does not
favour a drop.

    python benchmarks/memorization_fairdropout.py runs/mem-regime runs/mem-regime-fd --seed 0 \
        [--top 0.05] [--out docs/results/memorization_fairdropout.json] [--figure FILE.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from spurcore.api import PluginManager, atomic, open_run, predict
from spurcore_fairdropout import set_inference_mode
from spurcore_memorization.estimate import Estimate, memorization
from spurcore_memorization.outputs import describe, read_scores
from spurcore_memorization.procedure import full_data, model_path, read_settings

READINGS = ("ERM", "FairDropout, dropped", "FairDropout, kept")


def kept_estimate(fd_dir: Path, seed: int, models: int, trained: np.ndarray, train, plugins: PluginManager) -> Estimate:
    """The scores of the FairDropout models read with their memorizing units kept; `train`:
    the whole training split they are scored on."""
    correct = []
    for k in tqdm(range(models), desc="FairDropout models, units kept", leave=False):
        run = open_run(fd_dir / model_path(seed, k), plugins, device="cpu")
        model = run.load_model(0, "selected")
        set_inference_mode(model, "keep")
        correct.append(predict(model, train, run.device).argmax(1) == train.y)
    return memorization(np.stack(correct), trained)


def most_memorized(erm_dir: Path, seed: int, seeds: list[int], share: float, same: Estimate) -> tuple[np.ndarray, str]:
    """The top `share` of the training examples by ERM's score, averaged over ERM's *other*
    seeds where the folder has them: examples chosen by the same models' scores would carry
    those models' noise upwards, so their ERM score would overstate any drop under
    FairDropout (regression to the mean). Falls back to the same seed, and says so."""
    others = [s for s in seeds if s != seed and (erm_dir / f"seed{s}" / "scores.h5").exists()]
    if others:
        stack = np.stack([read_scores(erm_dir / f"seed{s}" / "scores.h5")["memorization"] for s in others])
        defined = (~np.isnan(stack)).sum(0)
        scores = np.where(defined > 0, np.nansum(stack, axis=0) / np.maximum(defined, 1), np.nan)
        how = f"ERM's mean score over seeds {', '.join(map(str, others))} (models independent of seed {seed}'s)"
    else:
        scores = same.memorization
        how = f"ERM's score on seed {seed} itself: biased upwards on ERM's side by the choice"
    ranked = np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable")
    top = np.zeros(len(scores), dtype=bool)
    top[ranked[:max(1, round(share * np.isfinite(scores).sum()))]] = True
    return top, how


def paired(estimate: Estimate, erm: Estimate, mask: np.ndarray) -> dict:
    """The mean over `mask`'s examples of (score here - ERM's score), where both are defined,
    with its standard error: the scores are of the same examples, so the difference is paired."""
    diff = (estimate.memorization - erm.memorization)[mask]
    diff = diff[~np.isnan(diff)]
    return {"examples": int(diff.size), "mean": float(diff.mean()), "sem": float(diff.std(ddof=1) / np.sqrt(diff.size))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("erm", type=Path, help="the ERM pipeline's `spur memorization` folder")
    parser.add_argument("fairdropout", type=Path, help="the FairDropout pipeline's folder, same settings")
    parser.add_argument("--seed", type=int, default=0, help="the procedure seed both folders have")
    parser.add_argument("--top", type=float, default=0.05, help="share of ERM's most memorized examples followed")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--figure", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    plugins = PluginManager()
    erm_settings, fd_settings = read_settings(args.erm), read_settings(args.fairdropout)
    for key in ("models", "subset", "epochs", "selector"):
        if erm_settings[key] != fd_settings[key]:
            raise SystemExit(f"{args.erm} and {args.fairdropout}: their {key} differ "
                             f"({erm_settings[key]} and {fd_settings[key]}); the scores would not be paired")
    models = erm_settings["models"]
    erm = read_scores(args.erm / f"seed{args.seed}" / "scores.h5")
    dropped = read_scores(args.fairdropout / f"seed{args.seed}" / "scores.h5")
    if not (np.array_equal(erm["trained"], dropped["trained"]) and np.array_equal(erm["y"], dropped["y"])):
        raise SystemExit(f"seed {args.seed}: the two folders' models did not train on the same subsets")
    data = full_data(args.erm, plugins)
    estimates = {
        "ERM": memorization(erm["correct"], erm["trained"]),
        "FairDropout, dropped": memorization(dropped["correct"], dropped["trained"]),
        "FairDropout, kept": kept_estimate(args.fairdropout, args.seed, models, erm["trained"], data.splits["train"],
                                           plugins),
    }
    names = list(data.group_names)
    top, chosen_by = most_memorized(args.erm, args.seed, erm_settings["seeds"], args.top, estimates["ERM"])
    sets = {name: erm["group"] == g for g, name in enumerate(names)}
    sets[f"ERM's top {args.top:.0%}"] = top
    result = {"erm": str(args.erm), "fairdropout": str(args.fairdropout), "seed": args.seed, "models": models,
              "subset": erm_settings["subset"], "epochs": erm_settings["epochs"], "top_chosen_by": chosen_by,
              "top_composition": {name: int((top & (erm["group"] == g)).sum()) for g, name in enumerate(names)},
              "rows": {label: {reading: describe(estimates[reading].memorization, mask,
                                                    accuracies=estimates[reading].accuracies) for reading in READINGS}
                       for label, mask in sets.items()},
              "paired_difference": {label: {reading: paired(estimates[reading], estimates["ERM"], mask)
                                            for reading in READINGS[1:]} for label, mask in sets.items()}}
    lines = ["| examples | n | " + " | ".join(f"{r}: mean score" for r in READINGS) + " | "
             + " | ".join(f"{r}: acc. in / out (%)" for r in READINGS) + " |",
             "|---|---:|" + "---:|" * (2 * len(READINGS))]
    for label, row in result["rows"].items():
        first = row["ERM"]
        lines.append(f"| {label} | {first['examples']} | "
                     + " | ".join(f"{row[r]['mean']:.3f} ± {row[r]['sem']:.3f}" for r in READINGS) + " | "
                     + " | ".join(f"{100 * row[r]['accuracy_in']:.1f} / {100 * row[r]['accuracy_out']:.1f}"
                                  for r in READINGS) + " |")
    lines += ["", "| examples | " + " | ".join(f"{r} - ERM (paired)" for r in READINGS[1:]) + " |",
              "|---|" + "---:|" * (len(READINGS) - 1)]
    for label, row in result["paired_difference"].items():
        lines.append(f"| {label} | " + " | ".join(f"{row[r]['mean']:+.3f} ± {row[r]['sem']:.3f}" for r in READINGS[1:])
                     + " |")
    result["table"] = "\n".join(lines)
    if args.out:
        atomic.write_json(args.out, result)
    if args.figure:
        figure(args.figure, result)
    print(result["table"])
    print(f"top {args.top:.0%} chosen by {chosen_by}: {json.dumps(result['top_composition'])}")


def figure(path: Path, result: dict) -> None:
    """Mean score (± standard error over the examples) per group and for ERM's most memorized
    examples, under each reading."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(result["rows"])
    fig, ax = plt.subplots(figsize=(9, 3.8))
    x = np.arange(len(labels))
    for j, reading in enumerate(READINGS):
        rows = [result["rows"][label][reading] for label in labels]
        ax.bar(x + (j - 1) * 0.27, [r["mean"] for r in rows], 0.27, yerr=[r["sem"] for r in rows], label=reading)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xticks(x, labels, rotation=12, fontsize=8)
    ax.set_ylabel("mean memorization score")
    ax.legend(fontsize=8)
    ax.set_title(f"the same examples, the same subsets: ERM against FairDropout (seed {result['seed']}, "
                 f"K = {result['models']}, {result['epochs']} epochs)", fontsize=9)
    fig.tight_layout()
    atomic.write_figure(fig, path, dpi=120)


if __name__ == "__main__":
    main()
