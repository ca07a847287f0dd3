"""Compare methods on waterdigits over seeds: ERM, then each method as a stage on ERM's model.

For every seed, ERM runs once (`examples/erm.toml`, resumed when finished); every method then
runs as a post-hoc stage starting from that ERM model (`[init]`), so all rows share the same
ERM model and its cached embeddings. Prints a markdown table (mean ± std of test worst-group
and average accuracy, and the selector that chose each row) and writes JSON with every number.

    python benchmarks/compare.py --methods dfr,dfr-class,neurontune [--seeds 0,1,2] [--out runs/compare]
        [-o selector=sfit]                        # overrides for the ERM pipeline
        [--methods "neurontune:tuning_split=val"] # method:option=value;option=value (TOML values)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from spurcore import atomic
from spurcore.config import load_pipeline
from spurcore.plugins import PluginManager
from spurcore.runner import run_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--erm", default="examples/erm.toml")
    parser.add_argument("--methods", default="dfr,dfr-class,neurontune")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="runs/compare")
    parser.add_argument("-o", dest="overrides", action="append", default=[], help="override for the ERM pipeline")
    parser.add_argument("--stage-train", default="", help="training overrides of every method stage, e.g. epochs=5")
    args = parser.parse_args()
    plugins = PluginManager(block=["progress"])
    quiet = lambda message: None  # noqa: E731
    rows: dict[str, list[dict]] = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        erm_dir = Path(args.out) / f"erm-seed{seed}"
        erm = run_pipeline(load_pipeline(args.erm, [*args.overrides, f"seed={seed}"]), erm_dir, plugins,
                           resume="auto", log=quiet)
        rows.setdefault("erm", []).append(_row(erm, erm["selected"]["selector"]))
        for label in args.methods.split(","):
            method, _, options = label.partition(":")
            table = "{" + ", ".join(options.split(";")) + "}" if options else "{}"
            overrides = [*args.overrides, f"seed={seed}", f'init.run="{erm_dir}"',
                         f'stages=[{{method="{method}", options={table}, train={{{args.stage_train}}}}}]']
            folder = Path(args.out) / f"{label.replace(':', '-').replace(';', '-').replace('=', '')}-seed{seed}"
            summary = run_pipeline(load_pipeline(args.erm, overrides), folder, plugins, resume="auto", log=quiet)
            rows.setdefault(label, []).append(_row(summary, f"{erm['selected']['selector']} (ERM epoch)"))
    table = _table(rows)
    print(table)
    atomic.write_json(Path(args.out) / "compare.json", rows)
    atomic.write_text(Path(args.out) / "compare.md", table)


def _row(summary: dict, selector: str) -> dict:
    test = summary["metrics"]["test"]
    return {"wga": test["worst_group_acc"], "avg": test["avg_acc"], "selector": selector}


def _table(rows: dict[str, list[dict]]) -> str:
    lines = ["| method | test WGA % | test average % | seeds | chosen by |", "|---|---:|---:|---:|---|"]
    for method, runs in rows.items():
        wga, avg = (100 * np.array([r[k] for r in runs]) for k in ("wga", "avg"))
        lines.append(f"| {method} | {wga.mean():.1f} ± {wga.std():.1f} | {avg.mean():.1f} ± {avg.std():.1f} "
                     f"| {len(runs)} | {runs[0]['selector']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
