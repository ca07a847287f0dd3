"""FairDropout on waterdigits: ERM, FairDropout and FairDropout-DFR over seeds.

For every seed: ERM (`examples/erm.toml`); FairDropout for every setting of a small grid, the
setting chosen by validation worst-class accuracy (no attribute labels); DFR on the chosen
FairDropout model in inference mode (`[init]`). Also the paper's check: test worst-group
accuracy of the chosen model with its memorizing units kept versus dropped. Prints a markdown
table and writes JSON. Finished runs are reused (resume).

    python benchmarks/fairdropout_results.py [--seeds 0,1,2] [--out runs/fairdropout]
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch

from spurcore import atomic
from spurcore.config import load_pipeline
from spurcore.data import iterate_batches
from spurcore.evaluation import Predictions, compute_metrics, run_metrics
from spurcore.plugins import PluginManager
from spurcore.finished import open_run
from spurcore.runner import run_pipeline
from spurcore_fairdropout import set_inference_mode

GRID = {"p_gen": [0.5], "p_mem": [0.1, 0.5], "placement": [["block3"], ["block2"]]}


def options_table(setting: dict) -> str:
    return "{" + ", ".join(f"{k}={json.dumps(v)}" for k, v in setting.items()) + "}"


@torch.no_grad()
def test_metrics(run_dir: Path, plugins: PluginManager, mode: str) -> dict:
    reopened = open_run(run_dir, plugins)
    model = reopened.load_model()
    set_inference_mode(model, mode)
    split = reopened.data.splits["test"]
    preds = [model(b.x, index=b.index).argmax(1) for b in iterate_batches(split, torch.arange(len(split)), 512)]
    data = reopened.data
    return compute_metrics(Predictions(y=split.y, pred=torch.cat(preds).numpy(), a=split.a,
                                       class_names=data.class_names, attr_names=data.attr_names),
                           run_metrics(reopened.run))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="runs/fairdropout")
    args = parser.parse_args()
    plugins = PluginManager(block=["progress"])
    quiet = lambda message: None  # noqa: E731
    out = Path(args.out)
    rows = {"erm": [], "fairdropout": [], "fairdropout-dfr": []}
    checks = []
    for seed in (int(s) for s in args.seeds.split(",")):
        erm = run_pipeline(load_pipeline("examples/erm.toml", [f"seed={seed}"]), out / f"erm-seed{seed}", plugins,
                           resume="auto", log=quiet)
        rows["erm"].append({"test": erm["metrics"]["test"], "setting": None})
        candidates = []
        for values in itertools.product(*GRID.values()):
            setting = dict(zip(GRID, values))
            name = "fd-" + "-".join(f"{k}{'_'.join(v) if isinstance(v, list) else v}" for k, v in setting.items())
            folder = out / f"{name}-seed{seed}"
            stage = f'stages=[{{method="fairdropout", options={options_table(setting)}}}]'
            summary = run_pipeline(load_pipeline("examples/erm.toml", [f"seed={seed}", stage]), folder, plugins,
                                   resume="auto", log=quiet)
            candidates.append((summary["metrics"]["val"]["worst_class_acc"], folder, setting, summary))
        _, folder, setting, chosen = max(candidates, key=lambda c: c[0])  # ties: the first
        rows["fairdropout"].append({"test": chosen["metrics"]["test"], "setting": setting})
        dfr = run_pipeline(load_pipeline("examples/erm.toml", [f"seed={seed}", f'init.run="{folder}"',
                                                               'stages=[{method="dfr"}]']),
                           out / f"fd-dfr-seed{seed}", plugins, resume="auto", log=quiet)
        rows["fairdropout-dfr"].append({"test": dfr["metrics"]["test"], "setting": setting})
        kept, dropped = (test_metrics(folder, plugins, m)["worst_group_acc"] for m in ("keep", "drop"))
        checks.append({"seed": seed, "setting": setting, "wga_kept": kept, "wga_dropped": dropped})
        print(json.dumps(checks[-1]), flush=True)
    lines = ["| method | test WGA % | test average % | chosen by |", "|---|---:|---:|---|"]
    for method, runs in rows.items():
        wga, avg = (100 * np.array([r["test"][k] for r in runs]) for k in ("worst_group_acc", "avg_acc"))
        how = "val-worst-class (epoch)" if method == "erm" else "val-worst-class (epoch and setting)"
        lines.append(f"| {method} | {wga.mean():.1f} ± {wga.std():.1f} | {avg.mean():.1f} ± {avg.std():.1f} | {how} |")
    kept = 100 * np.array([c["wga_kept"] for c in checks])
    dropped = 100 * np.array([c["wga_dropped"] for c in checks])
    lines.append(f"\nSame FairDropout models, test WGA with memorizing units kept: {kept.mean():.1f} ± {kept.std():.1f}; "
                 f"dropped: {dropped.mean():.1f} ± {dropped.std():.1f}")
    table = "\n".join(lines) + "\n"
    print(table)
    atomic.write_json(out / "fairdropout.json", {"rows": rows, "kept_vs_dropped": checks, "grid": GRID})
    atomic.write_text(out / "fairdropout.md", table)


if __name__ == "__main__":
    main()
