"""DFR parity: our `dfr` against the authors' reference code, on the same cached embeddings.

For every ERM run directory given, the embeddings of the model its selector chose are read from
the run's HDF5 cache (`RUN/embeddings/`, the file a post-hoc stage started from that run reads;
extracted and written there first if no stage has run yet). Then, on those arrays:

- the reference: `dfr_on_validation_tune` and `dfr_on_validation_eval` from
  `dfr_evaluate_spurious.py` in a local copy of the authors' repository
  (PolinaKirichenko/deep_feature_reweighting on GitHub), with that script's defaults
  (balance_val, no training data added), once per draw of numpy's global RNG
  (`np.random.seed(draw)`; the script itself never seeds it);
- ours: `spurcore_dfr.dfr_head` with its `seed` option set to each draw (draw 0 is what a `dfr`
  stage with default options reports), the head applied as the stage applies it and scored with
  spurcore's metrics.

Prints JSON: test worst-group and average accuracy (percent) for every draw, their medians, and
ours minus the reference.

    python benchmarks/dfr_reference.py RUN [RUN ...] --reference /tmp/dfr_ref [--draws 5]
        [-o 'standardize="subset"'] [--out docs/results/dfr_reference.json]

The reference script runs its whole evaluation (argument parsing, Waterbirds loading, a CUDA
ResNet) at import time, so it is not imported: its numpy and scikit-learn imports, its constants
and the two functions are read out of the file and executed unchanged.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import io
import json
import sys
import warnings
from pathlib import Path

import attrs
import numpy as np
import sklearn
import torch

from spurcore import atomic
from spurcore import config as cfg
from spurcore.data import group_ids
from spurcore.embeddings import cached
from spurcore.builtins.metrics import avg_acc, worst_group_acc
from spurcore.evaluation import Predictions
from spurcore.model import linear_head
from spurcore.plugins import PluginManager
from spurcore.finished import open_run
from spurcore_dfr import DFROptions, dfr_head

REFERENCE_FILE = "dfr_evaluate_spurious.py"
REFERENCE_NAMES = ("C_OPTIONS", "CLASS_WEIGHT_OPTIONS", "REG", "dfr_on_validation_tune", "dfr_on_validation_eval")
GOAL_POINTS = 0.5


def load_reference(folder: Path) -> dict:
    """The reference's two DFR(Val) functions with the module globals they read."""
    path = folder / REFERENCE_FILE
    if not path.is_file():
        sys.exit(f"--reference {folder}: no {REFERENCE_FILE} there. Get the authors' code first, e.g.\n"
                 f"    git clone https://github.com/PolinaKirichenko/deep_feature_reweighting {folder}\n"
                 "(only that file is read; nothing of it needs installing).")
    source = path.read_text()
    kept = [node for node in ast.parse(source).body if _needed(node)]
    namespace: dict = {"__name__": "dfr_reference"}
    exec(compile(ast.Module(body=kept, type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102
    missing = [name for name in REFERENCE_NAMES if name not in namespace]
    if missing:
        sys.exit(f"{path}: does not define {', '.join(missing)}; is it the authors' {REFERENCE_FILE}?")
    namespace["sha256"] = hashlib.sha256(source.encode()).hexdigest()
    return namespace


def _needed(node: ast.stmt) -> bool:
    """Imports of numpy and scikit-learn, the constants and the two functions; not the script."""
    if isinstance(node, ast.Import):
        return all(alias.name.split(".")[0] in ("numpy", "sklearn") for alias in node.names)
    if isinstance(node, ast.ImportFrom):
        return (node.module or "").split(".")[0] in ("numpy", "sklearn")
    if isinstance(node, ast.Assign):
        return all(isinstance(t, ast.Name) and t.id in REFERENCE_NAMES for t in node.targets)
    return isinstance(node, ast.FunctionDef) and node.name in REFERENCE_NAMES


def run_reference(reference: dict, features: dict, y: dict, g: dict, draw: int) -> dict:
    """One draw of the reference protocol with its script's defaults; its prints are dropped."""
    np.random.seed(draw)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        # scikit-learn >= 1.8 warns about its `penalty="l1"` spelling, which still fits L1
        warnings.filterwarnings("ignore", message=".*penalty.*deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", message="Inconsistent values: penalty=l1")
        c, w1, w2 = reference["dfr_on_validation_tune"](features, y, g, balance_val=True, add_train=False)
        test_accs, test_mean_acc, _ = reference["dfr_on_validation_eval"](
            c, w1, w2, features, y, g, balance_val=True, add_train=False)
    return {"wga": 100 * float(np.min(test_accs)), "avg": 100 * float(test_mean_acc), "c": float(c)}


@torch.no_grad()
def run_ours(runner, embeddings, options: DFROptions, draw: int) -> dict:
    """Our protocol as the `dfr` stage runs it: the float32 head on the test embeddings."""
    data = runner.data
    fit, record = dfr_head(embeddings, attrs.evolve(options, seed=draw), "group", data.n_classes, data.n_attrs)
    test = embeddings["test"]
    pred = linear_head(fit.coef, fit.intercept)(torch.from_numpy(test.features)).argmax(1).numpy()
    predictions = Predictions(y=test.y, pred=pred, a=test.a, class_names=data.class_names, attr_names=data.attr_names)
    metrics = {**avg_acc(predictions), **worst_group_acc(predictions)}
    return {"wga": 100 * metrics["worst_group_acc"], "avg": 100 * metrics["avg_acc"], "c": record["best_c"]}


def summarize(draws: list[dict]) -> dict:
    return {"wga": [round(d["wga"], 2) for d in draws], "avg": [round(d["avg"], 2) for d in draws],
            "c": [d["c"] for d in draws], "median_wga": round(float(np.median([d["wga"] for d in draws])), 2),
            "median_avg": round(float(np.median([d["avg"] for d in draws])), 2)}


def compare_run(run_dir: Path, reference: dict, options: DFROptions, draws: int, plugins: PluginManager) -> dict:
    runner = open_run(run_dir, plugins)
    found = cached(runner.load_model(), runner.data, runner.device,
                   cfg.to_dict(runner.config.dataset), write_to=run_dir / "embeddings")
    embeddings, n_attrs = found.embeddings, runner.data.n_attrs
    splits = ("train", "val", "test")
    features = {s: embeddings[s].features for s in splits}
    y = {s: embeddings[s].y for s in splits}
    g = {s: group_ids(embeddings[s].y, embeddings[s].a, n_attrs) for s in splits}
    theirs = summarize([run_reference(reference, features, y, g, d) for d in range(draws)])
    ours = summarize([run_ours(runner, embeddings, options, d) for d in range(draws)])
    return {"run": str(run_dir), "embeddings": str(found.path), "reference": theirs, "ours": ours,
            "ours_default_seed": {"wga": ours["wga"][0], "avg": ours["avg"][0]},
            "difference_wga": round(ours["median_wga"] - theirs["median_wga"], 2),
            "difference_avg": round(ours["median_avg"] - theirs["median_avg"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="ERM run directories")
    parser.add_argument("--reference", type=Path, required=True,
                        help=f"a local copy of the authors' repository (the folder holding {REFERENCE_FILE})")
    parser.add_argument("--draws", type=int, default=5, help="RNG draws of each protocol; medians are reported")
    parser.add_argument("-o", dest="options", action="append", default=[],
                        help="one of our dfr options, e.g. -o 'standardize=\"subset\"' (TOML value)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    reference = load_reference(args.reference)
    try:
        options = cfg.structure(DFROptions, cfg.tomllib.loads("\n".join(args.options)), "dfr")
    except (cfg.ConfigError, cfg.tomllib.TOMLDecodeError) as exc:
        sys.exit(f"-o {' '.join(args.options)}: {exc}")
    plugins = PluginManager(block=["progress"])
    runs = [compare_run(run, reference, options, args.draws, plugins) for run in args.runs]
    worst = max(abs(r["difference_wga"]) for r in runs)
    result = {
        "reference_sha256": reference["sha256"], "scikit_learn": sklearn.__version__, "draws": args.draws,
        "ours_options": cfg.to_dict(options), "runs": runs,
        "mean_difference_wga": round(float(np.mean([r["difference_wga"] for r in runs])), 2),
        "mean_difference_avg": round(float(np.mean([r["difference_avg"] for r in runs])), 2),
        "max_abs_difference_wga": worst, "goal_points": GOAL_POINTS, "goal_met": worst <= GOAL_POINTS,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        atomic.write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
