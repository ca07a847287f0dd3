"""How well the one-run memorization estimates agree with Feldman-Zhang's, and what each costs.

    python benchmarks/memorization_estimators.py --fz runs/mem-regime --one-run runs/mem-regime-onerun \
        --out docs/results/memorization_estimators.json --figure docs/figures/memorization/estimators.png

`--fz` is a `spur memorization` output (Feldman-Zhang, `DIR/seedS/scores.h5`), `--one-run` one of
`spur memorization --estimator ...` on the same pipeline (`DIR/<estimator>/seedS/scores.h5`); the
seeds both have are compared. Per seed, for every one-run estimator:

* `spearman`: Spearman's rank correlation with Feldman-Zhang's scores, over the examples both
  define, overall and within each group (None where a group has fewer than 3 such examples or
  either score is constant there);
* `top_overlap`: the share of Feldman-Zhang's top `--top` (5%) most memorized examples that are
  in the estimator's top `--top` too (the top k = ceil(share x examples) by score, ties to the
  lower position);
* `gap`: the mean score of the minority groups' examples and of the majority groups' (the
  groups below / at least an even share of their class, as `spur memorization`'s summaries
  split them), their difference, and that difference in standard deviations of the
  estimator's scores over all examples (`gap_sd`), comparable across estimators; Feldman-Zhang's
  own gap is given beside them;
* `cpu_minutes`: what the estimator's run cost (the record's seconds times torch threads;
  without the curvature passes for the estimators that do not read them); Feldman-Zhang's is
  its launch's wall time x jobs x threads divided by the seeds, an upper bound, and only when
  that launch trained every model (None when it found some finished).

Then the mean and standard deviation of each number over the seeds, a JSON file and a figure
(Spearman's correlation per group and overall, mean over seeds with the std as bars).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from spurcore.api import atomic
from spurcore_memorization.estimators import FELDMAN_ZHANG
from spurcore_memorization.outputs import read_scores

TOP = 0.05


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's correlation of two score vectors (NaNs already removed); None when it is undefined."""
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(stats.spearmanr(a, b).statistic)


def top(scores: np.ndarray, share: float) -> np.ndarray:
    """Positions of the ceil(share x n) highest scores, ties to the lower position."""
    count = max(1, math.ceil(share * len(scores)))
    return np.argsort(-scores, kind="stable")[:count]


def top_overlap(reference: np.ndarray, other: np.ndarray, share: float) -> float:
    """The share of `reference`'s top `share` that is in `other`'s top `share` too."""
    mine = top(reference, share)
    return float(np.isin(mine, top(other, share)).sum() / len(mine))


def gap(scores: np.ndarray, minority: np.ndarray) -> dict[str, float | None]:
    """Mean score of the minority (`minority`: a mask) and majority examples, their difference,
    and the difference in standard deviations of all the scores."""
    low, high = scores[minority], scores[~minority]
    if not low.size or not high.size:
        return {"minority": None, "majority": None, "gap": None, "gap_sd": None}
    difference = float(low.mean() - high.mean())
    spread = float(scores.std())
    return {"minority": float(low.mean()), "majority": float(high.mean()), "gap": difference,
            "gap_sd": difference / spread if spread > 0 else None}


def read_seed(folder: Path) -> dict[str, Any]:
    """A seed's scores, groups, labels and group names, and which groups are the minority."""
    arrays = read_scores(folder / "scores.h5")
    summary = json.loads((folder / "scores.json").read_text())
    return {"memorization": np.asarray(arrays["memorization"], dtype=float), "group": arrays["group"],
            "y": arrays["y"], "names": list(summary["groups"]), "minority": summary["minority_groups"],
            "cost": summary.get("cost")}


def compare_seed(fz: Mapping[str, Any], mine: Mapping[str, Any], share: float) -> dict[str, Any]:
    """One estimator against Feldman-Zhang on one seed."""
    if not np.array_equal(fz["y"], mine["y"]):
        raise SystemExit("the Feldman-Zhang and one-run scores are of different training splits (labels differ)")
    defined = ~np.isnan(fz["memorization"]) & ~np.isnan(mine["memorization"])
    a, b, groups = fz["memorization"][defined], mine["memorization"][defined], fz["group"][defined]
    minority = np.isin(groups, [fz["names"].index(name) for name in fz["minority"]])
    per_group = {name: spearman(a[groups == g], b[groups == g]) for g, name in enumerate(fz["names"])}
    return {"examples": int(defined.sum()), "spearman": {"overall": spearman(a, b), **per_group},
            "top_overlap": top_overlap(a, b, share), "gap": gap(b, minority), "fz_gap": gap(a, minority),
            "cpu_minutes": (mine["cost"] or {}).get("cpu_minutes")}


def fz_cpu_minutes(fz_dir: Path) -> float | None:
    """Feldman-Zhang's cost per seed from its launch record; None when unknown or partial."""
    summary = json.loads((fz_dir / "summary.json").read_text())
    launch = summary.get("launch")
    if not launch or launch["trials_finished_earlier"]:
        return None
    busy = min(launch["jobs"], launch["trials_run"]) * launch["threads"]
    return launch["wall_seconds"] * busy / 60 / len(summary["seeds"])


def spread(values: list[Any]) -> dict[str, float | None]:
    """Mean and standard deviation over seeds of the values that are defined."""
    found = np.array([v for v in values if v is not None], dtype=float)
    return {"mean": float(found.mean()) if found.size else None, "std": float(found.std()) if found.size else None}


def over_seeds(per_seed: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """Every number of `compare_seed`'s, as mean and std over the seeds."""
    rows = list(per_seed.values())
    out: dict[str, Any] = {"spearman": {k: spread([r["spearman"][k] for r in rows]) for k in rows[0]["spearman"]},
                           "top_overlap": spread([r["top_overlap"] for r in rows]),
                           "cpu_minutes": spread([r["cpu_minutes"] for r in rows])}
    for key in ("gap", "fz_gap"):
        out[key] = {k: spread([r[key][k] for r in rows]) for k in rows[0][key]}
    return out


def compare(fz_dir: Path, one_run_dir: Path, share: float = TOP) -> dict[str, Any]:
    """Every one-run estimator of `one_run_dir` against the Feldman-Zhang scores of `fz_dir`,
    on the seeds both have."""
    settings = json.loads((one_run_dir / "memorization.json").read_text())
    fz_seeds = json.loads((fz_dir / "summary.json").read_text())["seeds"]
    result: dict[str, Any] = {"feldman_zhang": str(fz_dir), "one_run": str(one_run_dir), "top_share": share,
                              "fz_cpu_minutes_per_seed": fz_cpu_minutes(fz_dir), "estimators": {}}
    for name in settings["estimators"]:
        if name == FELDMAN_ZHANG:
            continue
        seeds = sorted(set(fz_seeds) & set(json.loads((one_run_dir / name / "summary.json").read_text())["seeds"]))
        if not seeds:
            raise SystemExit(f"{one_run_dir / name}: no seed in common with {fz_dir} ({fz_seeds})")
        per_seed = {seed: compare_seed(read_seed(fz_dir / f"seed{seed}"), read_seed(one_run_dir / name / f"seed{seed}"),
                                       share) for seed in seeds}
        result["estimators"][name] = {"seeds": seeds, "per_seed": {str(s): r for s, r in per_seed.items()},
                                      **over_seeds(per_seed)}
    return result


def figure(result: Mapping[str, Any], path: Path) -> None:
    """Spearman's correlation with Feldman-Zhang, overall and per group, one bar per estimator."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    estimators = result["estimators"]
    columns = list(next(iter(estimators.values()))["spearman"])
    width = 0.8 / len(estimators)
    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(columns), 4.5))
    x = np.arange(len(columns))
    for j, (name, found) in enumerate(estimators.items()):
        means = [found["spearman"][c]["mean"] for c in columns]
        stds = [found["spearman"][c]["std"] or 0.0 for c in columns]
        ax.bar(x + (j - (len(estimators) - 1) / 2) * width, [m if m is not None else 0.0 for m in means], width,
               yerr=stds, label=f"{name} (top {result['top_share']:.0%} overlap "
                                f"{found['top_overlap']['mean']:.2f})")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xticks(x, columns, rotation=15, fontsize=8)
    ax.set_ylim(-1, 1)
    ax.set_ylabel("Spearman correlation with Feldman-Zhang")
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title("one-run estimates against Feldman-Zhang (mean over seeds, std as bars)", fontsize=10)
    fig.tight_layout()
    atomic.write_figure(fig, path, dpi=120)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fz", type=Path, required=True, help="a `spur memorization` (Feldman-Zhang) output folder")
    parser.add_argument("--one-run", type=Path, required=True,
                        help="a `spur memorization --estimator ...` output folder")
    parser.add_argument("--top", type=float, default=TOP, help="the share of most memorized examples compared")
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    parser.add_argument("--figure", type=Path, required=True, help="the PNG file to write")
    args = parser.parse_args(argv)
    result = compare(args.fz, args.one_run, args.top)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(args.out, result)
    args.figure.parent.mkdir(parents=True, exist_ok=True)
    figure(result, args.figure)
    for name, found in result["estimators"].items():
        rho, overlap = found["spearman"]["overall"], found["top_overlap"]
        print(f"{name}: Spearman {rho['mean']:.3f} ± {rho['std']:.3f}, top {args.top:.0%} overlap "
              f"{overlap['mean']:.3f} ± {overlap['std']:.3f}, "
              f"minority - majority {found['gap']['gap_sd']['mean']:.2f} sd, {found['cpu_minutes']['mean']:.2f} CPU-minutes per seed")
    return result


if __name__ == "__main__":
    main()
