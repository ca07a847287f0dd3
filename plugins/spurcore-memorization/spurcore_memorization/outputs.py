"""What `spur memorization` writes, for every estimator alike: per seed, `scores.h5` (every
example's score, with its index, class, attribute and group) and `scores.json` (per group);
over the seeds, `summary.json`, `summary.md` and `scores.png` (the distribution of the scores
per group, and the accuracies per group). Every file is written atomically."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from spurcore.api import SpuriousData, atomic, group_ids

THRESHOLDS = (0.25, 0.5)  # Feldman-Zhang's scale: shares of each group above these scores
FELDMAN_ZHANG_LABEL = "memorization score (acc. trained on - acc. held out)"


def labels(data: SpuriousData, split: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Each example's group and the group names: `class/attribute`, or the class when the split
    has no attribute labels."""
    found = data.splits[split]
    if found.a is None:
        return found.y, data.class_names
    return group_ids(found.y, found.a, data.n_attrs), data.group_names


def minority_groups(data: SpuriousData) -> list[str]:
    """The groups smaller than an even share of their class in the training split (fewer than
    1 / n_attrs of its examples): waterdigits' curved digits on water and straight on land."""
    counts = data.group_counts("train")
    if counts is None:
        return []
    names = data.group_names
    found = []
    for c in range(data.n_classes):
        members = names[c * data.n_attrs:(c + 1) * data.n_attrs]
        total = sum(counts[g] for g in members)
        found += [g for g in members if counts[g] * data.n_attrs < total]
    return found


def describe(scores: np.ndarray, mask: np.ndarray | None = None, thresholds: Sequence[float] = THRESHOLDS,
             accuracies: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Mean (and its standard error over the examples), median and the share above each of
    `thresholds` of the defined scores among `mask`, and the mean of each of `accuracies`
    (per-example arrays, NaN where undefined) there."""
    mask = np.ones(len(scores), dtype=bool) if mask is None else mask
    chosen = scores[mask]
    defined = chosen[~np.isnan(chosen)]
    out: dict[str, Any] = {"examples": int(mask.sum()), "defined": int(defined.size)}
    out["mean"] = float(defined.mean()) if defined.size else None
    # the mean's standard error over the group's examples: at small K each score is noisy
    out["sem"] = float(defined.std(ddof=1) / np.sqrt(defined.size)) if defined.size > 1 else None
    out["median"] = float(np.median(defined)) if defined.size else None
    for t in thresholds:
        out[f"share_above_{t}"] = float((defined > t).mean()) if defined.size else None
    for key, per_example in (accuracies or {}).items():
        values = per_example[mask]
        values = values[~np.isnan(values)]
        out[key] = float(values.mean()) if values.size else None
    return out


@attrs.frozen(kw_only=True)
class SeedScores:
    """One seed's scores of one estimator, as its files hold them: `memorization` (per training
    example, higher = more memorized, NaN where undefined); `accuracies`, per-example accuracy
    columns summarized per group (`accuracy_in`, `accuracy_out`); `test_accuracy` per test
    example; `train` and `test`, more arrays for `scores.h5`; `attributes`, its settings."""

    memorization: np.ndarray
    accuracies: Mapping[str, np.ndarray]
    test_accuracy: np.ndarray
    train: Mapping[str, np.ndarray] = attrs.field(factory=dict)
    test: Mapping[str, np.ndarray] = attrs.field(factory=dict)
    attributes: Mapping[str, Any] = attrs.field(factory=dict)


def seed_summary(data: SpuriousData, scores: SeedScores, thresholds: Sequence[float] = THRESHOLDS) -> dict[str, Any]:
    """Per group (and pooled over the minority and the majority groups): the scores' summary,
    the accuracy columns and the test accuracy."""
    groups, names = labels(data, "train")
    test_groups, _ = labels(data, "test")
    minority = minority_groups(data)

    def entry(members: list[int]) -> dict[str, Any]:
        found = describe(scores.memorization, np.isin(groups, members), thresholds, scores.accuracies)
        in_test = np.isin(test_groups, members)
        found["test_accuracy"] = float(scores.test_accuracy[in_test].mean()) if in_test.any() else None
        return found

    out: dict[str, Any] = {"groups": {name: entry([g]) for g, name in enumerate(names)},
                           "minority_groups": minority}
    if minority:
        out["minority"] = entry([names.index(g) for g in minority])
        out["majority"] = entry([g for g, name in enumerate(names) if name not in minority])
    return out


def write_scores(path: Path, data: SpuriousData, scores: SeedScores) -> None:
    """`scores.h5`: groups `train` (index, y, a, group, memorization, the accuracy columns and
    `scores.train`) and `test` (index, y, a, group, accuracy and `scores.test`); class,
    attribute and group names and `scores.attributes` as attributes. Tables (2-d) compressed."""
    import h5py

    arrays = {"train": {"memorization": scores.memorization, **scores.accuracies, **scores.train},
              "test": {"accuracy": scores.test_accuracy, **scores.test}}
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as handle:
        for key, value in scores.attributes.items():
            handle.attrs[key] = value
        handle.attrs["class_names"] = list(data.class_names)
        handle.attrs["attr_names"] = list(data.attr_names)
        for split in ("train", "test"):
            found = data.splits[split]
            group = handle.create_group(split)
            groups, names = labels(data, split)
            group.attrs["group_names"] = list(names)
            group.create_dataset("index", data=np.arange(len(found)))
            group.create_dataset("y", data=found.y)
            if found.a is not None:
                group.create_dataset("a", data=found.a)
            group.create_dataset("group", data=groups)
            for key, value in arrays[split].items():
                group.create_dataset(key, data=value, **({"compression": "lzf"} if np.ndim(value) > 1 else {}))
    with atomic.atomic_open(path, "wb") as out:
        out.write(buffer.getvalue())


def read_scores(path: Path) -> dict[str, np.ndarray]:
    """The training split's arrays of a `scores.h5` (index, y, group, memorization, ...)."""
    import h5py

    with h5py.File(path, "r") as handle:
        return {key: value[()] for key, value in handle["train"].items()}


def write_seed(folder: Path, data: SpuriousData, scores: SeedScores, extra: Mapping[str, Any],
               thresholds: Sequence[float] = THRESHOLDS) -> dict[str, Any]:
    """One seed's `scores.h5` and `scores.json` (its `seed_summary` and `extra`) in `folder`;
    returns what `scores.json` holds."""
    folder.mkdir(parents=True, exist_ok=True)
    write_scores(folder / "scores.h5", data, scores)
    summary = {**seed_summary(data, scores, thresholds), **extra}
    atomic.write_json(folder / "scores.json", summary)
    return summary


def write_summary(out: Path, data: SpuriousData, per_seed: Mapping[int, Mapping[str, Any]],
                  memorization: Mapping[int, np.ndarray], record: Mapping[str, Any], title: str,
                  score_label: str = FELDMAN_ZHANG_LABEL, limits: tuple[float, float] | None = (-1.02, 1.02),
                  number: str = ".3f") -> tuple[dict[str, Any], str]:
    """Over the seeds: `summary.json` (`record` and the groups' `across_seeds`), `summary.md`
    (the table) and `scores.png` (the figure) in `out`; returns the groups' summary and the table."""
    summary = across_seeds(per_seed)
    atomic.write_json(out / "summary.json", {**record, "seeds": sorted(per_seed), "groups": summary})
    text = table(summary, number)
    atomic.write_text(out / "summary.md", text)
    groups, names = labels(data, "train")
    figure(out / "scores.png",
           {seed: {"memorization": values, "group": groups} for seed, values in memorization.items()}, list(names), summary, title, score_label, limits)
    return summary, text


def across_seeds(per_seed: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and std over the seeds of each group's (and the minority's and majority's) mean
    score, median, shares above the thresholds, and accuracies."""
    first = next(iter(per_seed.values()))
    names = [*first["groups"], *(k for k in ("minority", "majority") if k in first)]
    out: dict[str, Any] = {}
    for name in names:
        entries = [s["groups"][name] if name in s["groups"] else s[name] for s in per_seed.values()]
        row: dict[str, Any] = {"examples": entries[0]["examples"]}
        for key in (k for k in entries[0] if k not in ("examples", "defined", "sem")):
            values = np.array([e[key] for e in entries if e[key] is not None], dtype=float)
            row[key] = {"mean": float(values.mean()) if values.size else None,
                        "std": float(values.std()) if values.size else None,
                        "seeds": [e[key] for e in entries]}
        row["undefined"] = [e["examples"] - e["defined"] for e in entries]
        out[name] = row
    return out


ACCURACY_COLUMNS = {"accuracy_in": "acc. trained on (%)", "accuracy_out": "acc. held out (%)",
                    "test_accuracy": "test acc. (%)"}


def table(summary: Mapping[str, Any], number: str = ".3f") -> str:
    """The summary as a markdown table: mean ± std over seeds, scores in the format `number`,
    accuracies in percent; a column for each share and accuracy the summary has."""
    def cell(entry: Mapping[str, Any], percent: bool = False) -> str:
        if entry["mean"] is None:
            return "n/a"
        if percent:
            return f"{entry['mean'] * 100:.1f} ± {entry['std'] * 100:.1f}"
        return f"{entry['mean']:{number}} ± {entry['std']:{number}}"

    row = next(iter(summary.values()))
    shares = [k for k in row if k.startswith("share_above_")]
    accuracies = [k for k in ACCURACY_COLUMNS if k in row]
    headers = ["group", "training examples", "mean score", "median",
               *(f"share > {k[len('share_above_'):]}" for k in shares), *(ACCURACY_COLUMNS[k] for k in accuracies)]
    lines = ["| " + " | ".join(headers) + " |", "|---|" + "---:|" * (len(headers) - 1)]
    for name, row in summary.items():
        label = f"**{name}**" if name in ("minority", "majority") else name
        cells = [label, str(row["examples"]), cell(row["mean"]), cell(row["median"]),
                 *(cell(row[k]) for k in shares), *(cell(row[k], True) for k in accuracies)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


ACCURACY_BARS = {"accuracy_in": "trained on", "accuracy_out": "held out", "test_accuracy": "test"}


def figure(path: Path, scores: Mapping[int, Mapping[str, np.ndarray]], group_names: Sequence[str],
           summary: Mapping[str, Any], title: str, score_label: str = FELDMAN_ZHANG_LABEL,
           limits: tuple[float, float] | None = (-1.02, 1.02)) -> None:
    """Left: the distribution (cumulative) of the memorization scores of each group, every
    seed's examples pooled (`limits`: the score axis, None to fit the scores); right: per group,
    each accuracy the summary has (trained on, held out, test; mean over seeds, std as bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for g, name in enumerate(group_names):
        values = np.concatenate([s["memorization"][s["group"] == g] for s in scores.values()])
        values = np.sort(values[~np.isnan(values)])
        if values.size:
            left.step(values, np.arange(1, values.size + 1) / values.size, where="post",
                      label=f"{name} (n={values.size})")
    left.set_xlabel(score_label)
    left.set_ylabel("share of the group's examples at or below")
    if limits is not None:
        left.set_xlim(*limits)
        left.axvline(0, color="grey", lw=0.5)
    left.legend(fontsize=8, loc="upper left")
    left.set_title("score distribution per group")
    keys = [(key, label) for key, label in ACCURACY_BARS.items() if key in summary[group_names[0]]]
    width = 0.8 / len(keys)
    x = np.arange(len(group_names))
    for j, (key, label) in enumerate(keys):
        means = [summary[n][key]["mean"] or 0.0 for n in group_names]
        stds = [summary[n][key]["std"] or 0.0 for n in group_names]
        right.bar(x + (j - (len(keys) - 1) / 2) * width, means, width, yerr=stds, label=label)
    right.set_xticks(x, group_names, rotation=15, fontsize=8)
    right.set_ylim(0, 1.05)
    right.set_ylabel("accuracy (mean over models)")
    right.legend(fontsize=8, loc="lower left")
    right.set_title("accuracy per group")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic.write_figure(fig, path, dpi=120)
