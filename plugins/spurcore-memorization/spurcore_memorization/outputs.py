"""What `spur memorization` writes: per seed, `scores.h5` (every example's estimate, with its
index, class, attribute and group) and `scores.json` (per group); over the seeds, `summary.json`
and `scores.png` (the distribution of the scores per group, and train-in / train-out / test
accuracy per group). Every file is written atomically."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spurcore.api import SpuriousData, atomic, group_ids
from spurcore_memorization.estimate import Estimate

THRESHOLDS = (0.25, 0.5)


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


def describe(scores: np.ndarray, estimate: Estimate | None = None, mask: np.ndarray | None = None) -> dict[str, Any]:
    """Mean (and its standard error over the examples), median and the share above each
    threshold of the defined scores among `mask`."""
    mask = np.ones(len(scores), dtype=bool) if mask is None else mask
    chosen = scores[mask]
    defined = chosen[~np.isnan(chosen)]
    out: dict[str, Any] = {"examples": int(mask.sum()), "defined": int(defined.size)}
    out["mean"] = float(defined.mean()) if defined.size else None
    # the mean's standard error over the group's examples: at small K each score is noisy
    out["sem"] = float(defined.std(ddof=1) / np.sqrt(defined.size)) if defined.size > 1 else None
    out["median"] = float(np.median(defined)) if defined.size else None
    for t in THRESHOLDS:
        out[f"share_above_{t}"] = float((defined > t).mean()) if defined.size else None
    if estimate is not None:
        for key in ("accuracy_in", "accuracy_out"):
            values = getattr(estimate, key)[mask]
            values = values[~np.isnan(values)]
            out[key] = float(values.mean()) if values.size else None
    return out


def seed_summary(data: SpuriousData, estimate: Estimate, correct_test: np.ndarray) -> dict[str, Any]:
    """Per group (and pooled over the minority and the majority groups): the scores' summary,
    the accuracy of the models that trained / did not train on the examples, and the test
    accuracy (averaged over the models)."""
    groups, names = labels(data, "train")
    test_groups, _ = labels(data, "test")
    test_acc = correct_test.mean(0)
    minority = minority_groups(data)

    def entry(members: list[int]) -> dict[str, Any]:
        found = describe(estimate.memorization, estimate, np.isin(groups, members))
        in_test = np.isin(test_groups, members)
        found["test_accuracy"] = float(test_acc[in_test].mean()) if in_test.any() else None
        return found

    out: dict[str, Any] = {"groups": {name: entry([g]) for g, name in enumerate(names)},
                           "minority_groups": minority}
    if minority:
        out["minority"] = entry([names.index(g) for g in minority])
        out["majority"] = entry([g for g, name in enumerate(names) if name not in minority])
    return out


def write_scores(path: Path, data: SpuriousData, estimate: Estimate, collected: Mapping[str, np.ndarray],
                 attributes: Mapping[str, Any]) -> None:
    """`scores.h5`: groups `train` (index, y, a, group, memorization, accuracy_in, accuracy_out,
    models_in, models_out, correct and trained as models x examples) and `test` (index, y, a,
    group, accuracy, correct); names and settings as attributes."""
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as handle:
        for key, value in attributes.items():
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
            group.create_dataset("correct", data=collected[f"correct_{split}"], compression="lzf")
        train = handle["train"]
        for key in ("memorization", "accuracy_in", "accuracy_out", "models_in", "models_out"):
            train.create_dataset(key, data=getattr(estimate, key))
        train.create_dataset("trained", data=collected["trained"], compression="lzf")
        handle["test"].create_dataset("accuracy", data=collected["correct_test"].mean(0))
    with atomic.atomic_open(path, "wb") as out:
        out.write(buffer.getvalue())


def read_scores(path: Path) -> dict[str, np.ndarray]:
    """The training split's arrays of a `scores.h5` (index, y, group, memorization, ...)."""
    import h5py

    with h5py.File(path, "r") as handle:
        return {key: value[()] for key, value in handle["train"].items()}


def across_seeds(per_seed: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and std over the seeds of each group's (and the minority's and majority's) mean
    score, share above 0.5, and accuracies."""
    first = next(iter(per_seed.values()))
    names = [*first["groups"], *(k for k in ("minority", "majority") if k in first)]
    out: dict[str, Any] = {}
    for name in names:
        entries = [s["groups"][name] if name in s["groups"] else s[name] for s in per_seed.values()]
        row: dict[str, Any] = {"examples": entries[0]["examples"]}
        for key in ("mean", "median", "share_above_0.25", "share_above_0.5", "accuracy_in", "accuracy_out",
                    "test_accuracy"):
            values = np.array([e[key] for e in entries if e[key] is not None], dtype=float)
            row[key] = {"mean": float(values.mean()) if values.size else None,
                        "std": float(values.std()) if values.size else None,
                        "seeds": [e[key] for e in entries]}
        row["undefined"] = [e["examples"] - e["defined"] for e in entries]
        out[name] = row
    return out


def table(summary: Mapping[str, Any]) -> str:
    """The summary as a markdown table: mean ± std over seeds."""
    def cell(entry: Mapping[str, Any], percent: bool = False) -> str:
        if entry["mean"] is None:
            return "n/a"
        scale = 100 if percent else 1
        return f"{entry['mean'] * scale:.{1 if percent else 3}f} ± {entry['std'] * scale:.{1 if percent else 3}f}"

    lines = ["| group | training examples | mean score | median | share > 0.25 | share > 0.5 | "
             "acc. trained on (%) | acc. held out (%) | test acc. (%) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in summary.items():
        label = f"**{name}**" if name in ("minority", "majority") else name
        lines.append(f"| {label} | {row['examples']} | {cell(row['mean'])} | {cell(row['median'])} | "
                     f"{cell(row['share_above_0.25'])} | {cell(row['share_above_0.5'])} | "
                     f"{cell(row['accuracy_in'], True)} | {cell(row['accuracy_out'], True)} | "
                     f"{cell(row['test_accuracy'], True)} |")
    return "\n".join(lines) + "\n"


def figure(path: Path, scores: Mapping[int, Mapping[str, np.ndarray]], group_names: Sequence[str],
           summary: Mapping[str, Any], title: str) -> None:
    """Left: the distribution (cumulative) of the memorization scores of each group, every
    seed's examples pooled; right: per group, the accuracy of the models that trained on an
    example, of those that did not, and on test (mean over seeds, std as bars)."""
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
    left.set_xlabel("memorization score (acc. trained on - acc. held out)")
    left.set_ylabel("share of the group's examples at or below")
    left.set_xlim(-1.02, 1.02)
    left.axvline(0, color="grey", lw=0.5)
    left.legend(fontsize=8, loc="upper left")
    left.set_title("score distribution per group")
    keys = (("accuracy_in", "trained on"), ("accuracy_out", "held out"), ("test_accuracy", "test"))
    x = np.arange(len(group_names))
    for j, (key, label) in enumerate(keys):
        means = [summary[n][key]["mean"] or 0.0 for n in group_names]
        stds = [summary[n][key]["std"] or 0.0 for n in group_names]
        right.bar(x + (j - 1) * 0.27, means, 0.27, yerr=stds, label=label)
    right.set_xticks(x, group_names, rotation=15, fontsize=8)
    right.set_ylim(0, 1.05)
    right.set_ylabel("accuracy (mean over models)")
    right.legend(fontsize=8, loc="lower left")
    right.set_title("accuracy per group")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic.write_figure(fig, path, dpi=120)
