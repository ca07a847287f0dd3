"""Why does pruned-twin fine-tuning destroy the minority groups? Controls, run as pipelines.

Starts from finished ERM runs (the memorization regime's three seeds) and fine-tunes each of
them for a few epochs with one ingredient changed at a time, every control a real `spur`
pipeline: the ERM run's own pipeline with its stage replaced and `[init] run` its folder, so
the plugin's own code (mask, views, losses, the epoch-0 candidate) is what is measured.

- `erm-continued`: ERM trained on for the same epochs with pruned-twin's optimizer settings
  (Adam 2e-4, plateau schedule), clean images: the noise floor of fine-tuning at all;
- `ours`: the plugin's defaults (NT-Xent target vs twin on two Table 1 views, projection head
  of 128, q 0.01% by magnitude, 0.2 x squared error on the softmax);
- `released-code`: the authors' released recipe: one shared view, NT-Xent with stop-gradient
  on the softmax outputs, 0.2 x cross-entropy, the 1% smallest weights masked;
- `projection-2`: the paper's recipe with a projection output of size 2 (its Table 2);
- `same-clean-image`: both branches fed the same unaugmented image;
- `positives-only`: the pairs aligned (1 - cosine) without negatives;
- `ce-logits`: cross-entropy on the logits instead of the squared error on the softmax;
- `views-ce-only`: no contrastive term, cross-entropy on one Table 1 view (ERM on the views);
- `colour`: colour distortion added to the two views;
- `gradient`: the defaults with the gradient mask instead of the magnitude one.

    python benchmarks/prunedtwin_diagnosis.py --erm RUN [--erm RUN ...] --out runs/ptdiag [--epochs 2]
        [--controls ours,erm-continued,...] [--jobs 2] [--json docs/results/prunedtwin_diagnosis_regime.json]
        [--figure docs/figures/prunedtwin_diagnosis_regime.png]
    python benchmarks/prunedtwin_diagnosis.py --plot-only   # redraw the figure from --json

Launched again, it skips finished runs (and resumes cut ones). Writes JSON {control: {erm run:
{"epochs": [{epoch, worst, average, groups}], "selected": epoch, "selected_variant"}}} (test
accuracy, in [0, 1]; epoch 0 is the ERM model itself) and a figure of test worst-group accuracy
per epoch (mean and range over the ERM runs); prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from spurcore import atomic

FINE_TUNE = {"optimizer": "adam", "lr": 2e-4, "weight_decay": 0.0, "scheduler": "plateau"}
CONTROLS = {
    "erm-continued": {"method": "erm", "train": FINE_TUNE},
    "ours": {"method": "prunedtwin", "options": {}},
    "released-code": {"method": "prunedtwin", "options": {
        "same_view": True, "space": "output", "projection": False, "supervised": "ce", "lam": 0.2,
        "mask": "smallest-weights", "weight_percent": 1.0}},
    "projection-2": {"method": "prunedtwin", "options": {"projection_dim": 2}},
    "same-clean-image": {"method": "prunedtwin", "options": {"augment": False}},
    "positives-only": {"method": "prunedtwin", "options": {"contrast": "positives"}},
    "ce-logits": {"method": "prunedtwin", "options": {"supervised": "ce"}},
    "views-ce-only": {"method": "prunedtwin", "options": {"contrast": "none", "supervised": "ce", "lam": 1.0}},
    "colour": {"method": "prunedtwin", "options": {"colour": True}},
    "gradient": {"method": "prunedtwin", "options": {"criterion": "gradient"}},
}


def control_pipeline(erm: Path, control: str, epochs: int) -> dict:
    """The ERM run's pipeline with its stage replaced by `control`'s, fine-tuning that run."""
    from spurcore.config import load_pipeline, to_dict

    config = to_dict(load_pipeline(erm / "config.toml"))
    stage = {"method": CONTROLS[control]["method"], "options": dict(CONTROLS[control].get("options", {})),
             "train": {**CONTROLS[control].get("train", {}), "epochs": epochs}}
    config["stages"] = [stage]
    config["init"] = {"run": str(erm.resolve())}
    return config


def run_one(erm: str, control: str, epochs: int, out: str) -> str:
    """One control on one ERM run, in a process of its own with one thread."""
    import torch

    torch.set_num_threads(1)
    from spurcore.api import pipeline_from_dict, run_pipeline
    from spurcore.plugins import PluginManager

    config = pipeline_from_dict(control_pipeline(Path(erm), control, epochs), source=f"{control} on {erm}")
    if not (Path(out) / "summary.json").exists():
        run_pipeline(config, out, PluginManager(block=["progress"]), resume="auto", quiet=True, log=lambda m: None)
    return out


def test_row(epoch: int, test: dict) -> dict:
    return {"epoch": epoch, "worst": test["worst_group_acc"], "average": test["avg_acc"], "groups": test["group_acc"]}


def read_back(folder: Path, erm: Path) -> dict:
    """Test accuracy per epoch of one control run, epoch 0 the ERM model it started from (a
    fine-tuning stage evaluates it itself; continued ERM reads it from the ERM run)."""
    result = json.loads(next((folder / "checkpoints").glob("0-*/result.json")).read_text())
    epochs = [test_row(h["epoch"], h["metrics"]["test"]) for h in result["history"]]
    if epochs[0]["epoch"] != 0:
        epochs.insert(0, test_row(0, json.loads((erm / "summary.json").read_text())["metrics"]["test"]))
    return {"epochs": epochs, "selected": result["selected"]["epoch"],
            "selected_test": test_row(result["selected"]["epoch"], result["metrics"]["test"])}


def pct(values) -> str:
    values = 100 * np.asarray(values, dtype=float)
    return f"{values.mean():.1f} ± {values.std():.1f}"


def table(results: dict) -> str:
    """Markdown: per control, test worst group after each epoch and at the selected epoch."""
    epochs = max(len(r["epochs"]) for per in results.values() for r in per.values())
    head = ["control", *[f"epoch {e}" for e in range(epochs)], "selected epochs", "worst group, selected", "average, selected"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for control, per in results.items():
        runs = list(per.values())
        cells = [pct([r["epochs"][e]["worst"] for r in runs]) for e in range(epochs)]
        lines.append(f"| `{control}` | " + " | ".join(cells) + f" | {', '.join(str(r['selected']) for r in runs)} | "
                     f"{pct([r['selected_test']['worst'] for r in runs])} | "
                     f"{pct([r['selected_test']['average'] for r in runs])} |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.6, 4.2))
    for name, per_run in results.items():
        worst = np.array([[100 * e["worst"] for e in r["epochs"]] for r in per_run.values()])
        epochs = np.arange(worst.shape[1])
        style = dict(color="black", linestyle="--") if name == "erm-continued" else {}
        line, = ax.plot(epochs, worst.mean(0), marker="o", label=f"{name} ({len(worst)} seeds)", **style)
        ax.fill_between(epochs, worst.min(0), worst.max(0), color=line.get_color(), alpha=0.1)
    ax.set_xlabel("fine-tuning epoch (0 = the ERM model)")
    ax.set_ylabel("test worst-group accuracy (%)")
    ax.set_xticks(epochs)
    ax.set_ylim(0, 100)
    ax.set_title("Pruned twin: one ingredient changed at a time")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    with atomic.atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--erm", action="append", default=[], type=Path, help="a finished ERM run (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("runs/prunedtwin_diagnosis"), help="where the runs go")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--controls", default=",".join(CONTROLS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", type=Path, default=Path("docs/results/prunedtwin_diagnosis_regime.json"))
    parser.add_argument("--figure", type=Path, default=Path("docs/figures/prunedtwin_diagnosis_regime.png"))
    parser.add_argument("--plot-only", action="store_true")
    args = parser.parse_args()
    if args.plot_only:
        results = json.loads(args.json.read_text())
        plot(results, args.figure)
        print(table(results))
        return
    if not args.erm:
        parser.error("name at least one finished ERM run with --erm")
    controls = args.controls.split(",")
    unknown = sorted(set(controls) - set(CONTROLS))
    if unknown:
        parser.error(f"unknown controls {unknown}; known: {', '.join(CONTROLS)}")
    jobs = [(erm, control, args.out / control / erm.name) for control in controls for erm in args.erm]
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(run_one, str(erm), control, args.epochs, str(out)): (erm, control) for erm, control, out in jobs}
        for future, (erm, control) in futures.items():
            future.result()
            print(f"done: {control} on {erm}", flush=True)
    results = {control: {str(erm): read_back(out, erm) for erm, c, out in jobs if c == control} for control in controls}
    atomic.write_json(args.json, results)
    plot(results, args.figure)
    print(table(results))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
