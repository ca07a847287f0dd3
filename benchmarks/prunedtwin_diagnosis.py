"""Why does pruned-twin fine-tuning hurt worst-group accuracy on waterdigits? Controls.

Starts from a finished ERM run (its selected epoch, e.g. from `benchmarks/compare.py`) and
fine-tunes copies of it for a few epochs with the plugin's own loss pieces, changing one
thing at a time, and prints per-group test accuracy after every epoch:

- `paper`: the method's defaults (NT-Xent target-vs-twin on two Table 1 views + 0.2 x MSE);
- `no-mask`: the same with nothing masked (the twin is the target: plain SimCLR + 0.2 x MSE),
  which tells whether the mask matters;
- `colour`: the paper's loss with colour distortion added to both views;
- `no-mask-colour`: both changes;
- `supervised-views`: no contrastive term, cross-entropy on one Table 1 view (fine-tuning
  with augmentation alone), which tells whether the augmentations themselves hurt;
- `supervised-plain`: cross-entropy on the unaugmented images (continued ERM).

    python benchmarks/prunedtwin_diagnosis.py --erm runs/compare/erm-seed0 [--epochs 3]
        [--variants paper,no-mask,...] [--out docs/results/prunedtwin_diagnosis.json]
        [--figure docs/figures/prunedtwin_diagnosis.png]
    python benchmarks/prunedtwin_diagnosis.py --plot-only   # redraw the figure from --out

Writes JSON {variant: {erm run: [{epoch, test group accuracies, worst, average}, ...]}} and a
figure of test worst-group accuracy per epoch (mean and range over the ERM runs).
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from spurcore import atomic
from spurcore.data import iterate_batches
from spurcore.plugins import PluginManager
from spurcore.finished import open_run
from spurcore_prunedtwin import PrunedTwinOptions, PrunedTwinStage, augment, neuron_mask
from spurcore_prunedtwin.mask import NeuronMask, neuron_index

VARIANTS = {
    "paper": {"contrast": True, "mask": True, "colour": False},
    "no-mask": {"contrast": True, "mask": False, "colour": False},
    "colour": {"contrast": True, "mask": True, "colour": True},
    "no-mask-colour": {"contrast": True, "mask": False, "colour": True},
    "supervised-views": {"contrast": False, "augment": True},
    "supervised-plain": {"contrast": False, "augment": False},
}


def group_accuracy(model, split, class_names, attr_names) -> dict:
    model.eval()
    correct = []
    with torch.no_grad():
        for batch in iterate_batches(split, torch.arange(len(split)), 512):
            correct.append((model(batch.x).argmax(1) == batch.y).numpy())
    correct = np.concatenate(correct)
    groups = {f"{class_names[y]}/{attr_names[a]}": float(correct[(split.y == y) & (split.a == a)].mean())
              for y in range(len(class_names)) for a in range(len(attr_names))}
    return {"groups": groups, "worst": min(groups.values()), "average": float(correct.mean())}


def fine_tune(model, data, variant: dict, epochs: int, seed: int, batch_size: int = 64) -> list[dict]:
    train, test = data.splits["train"], data.splits["test"]
    names = (data.class_names, data.attr_names)
    options = PrunedTwinOptions(colour=variant.get("colour", False), seed=seed)
    stage = PrunedTwinStage(options)
    if variant["contrast"]:
        stage.spurcore_prepare_model(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    history = [{"epoch": 0, **group_accuracy(model, test, *names)}]
    for epoch in range(1, epochs + 1):
        torch.manual_seed(seed * 1000 + epoch)
        generator = torch.Generator().manual_seed(seed * 1000 + epoch)
        if variant["contrast"]:
            stage.generator = generator
            stage.mask = (neuron_mask(model, options.q, "magnitude") if variant["mask"]
                          else NeuronMask(neuron_index(model), np.array([], dtype=np.int64)))
        model.train()
        order = torch.randperm(len(train), generator=generator)
        for batch in iterate_batches(train, order, batch_size):
            if variant["contrast"]:
                loss = stage.loss(model, batch)
            else:
                x = augment(batch.x, generator) if variant["augment"] else batch.x
                loss = F.cross_entropy(model(x), batch.y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        history.append({"epoch": epoch, **group_accuracy(model, test, *names)})
        row = history[-1]
        print(f"  epoch {epoch}: worst {100 * row['worst']:.1f} average {100 * row['average']:.1f} "
              + " ".join(f"{k} {100 * v:.1f}" for k, v in row["groups"].items()), flush=True)
    return history


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for name, per_run in results.items():
        worst = np.array([[100 * h["worst"] for h in history] for history in per_run.values()])
        epochs = np.arange(worst.shape[1])
        line, = ax.plot(epochs, worst.mean(0), marker="o", label=f"{name} ({len(worst)} seeds)")
        ax.fill_between(epochs, worst.min(0), worst.max(0), color=line.get_color(), alpha=0.12)
    ax.set_xlabel("fine-tuning epoch (0 = the ERM model)")
    ax.set_ylabel("test worst-group accuracy (%)")
    ax.set_xticks(epochs)
    ax.set_title("Pruned twin on waterdigits: which ingredient hurts?")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic.atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--erm", action="append", default=[], help="a finished ERM run directory (repeatable)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", default="docs/results/prunedtwin_diagnosis.json")
    parser.add_argument("--figure", default="docs/figures/prunedtwin_diagnosis.png")
    parser.add_argument("--plot-only", action="store_true")
    args = parser.parse_args()
    if args.plot_only:
        plot(json.loads(Path(args.out).read_text()), Path(args.figure))
        return
    if not args.erm:
        parser.error("name at least one finished ERM run with --erm")
    plugins = PluginManager(block=["progress"])
    results: dict[str, dict[str, list]] = {}
    for erm in args.erm:
        run = open_run(erm, plugins)
        start = run.load_model(0)
        seed = run.config.seed
        for name in args.variants.split(","):
            print(f"{Path(erm).name} {name}", flush=True)
            history = fine_tune(copy.deepcopy(start), run.data, VARIANTS[name], args.epochs, seed)
            results.setdefault(name, {})[Path(erm).name] = history
    atomic.write_json(Path(args.out), results)
    plot(results, Path(args.figure))
    print(json.dumps({name: {run: [round(100 * h["worst"], 1) for h in hist] for run, hist in per.items()}
                      for name, per in results.items()}))


if __name__ == "__main__":
    main()
