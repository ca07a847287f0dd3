"""Human-readable results: the per-group table (report.md, `spur show`) with the memorization
gap, and the figures (group_acc.png; group_acc_epochs.png, train and test accuracy per group
over epochs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spurcore import atomic

SUMMARY_KEYS = (("avg_acc", "average (all examples)"), ("worst_group_acc", "worst group"),
                ("worst_class_acc", "worst class"))


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


TABLE_SPLITS = ("train", "val", "test")
GAP_HEAD = "memorization gap (train - test, pts)"


def memorization_gap(metrics: dict[str, dict[str, Any]], group: str) -> float | None:
    """Train accuracy minus test accuracy of one group, in points (None when either is missing)."""
    train = metrics.get("train", {}).get("group_acc", {}).get(group)
    test = metrics.get("test", {}).get("group_acc", {}).get(group)
    return None if train is None or test is None else 100 * (train - test)


def group_table(metrics: dict[str, dict[str, Any]], splits: tuple[str, ...] | None = None) -> str:
    """A markdown table: one row per group (count and accuracy per split, and the memorization
    gap when train and test have group accuracies), then the summaries. `splits` defaults to
    those of train, val and test that were evaluated."""
    splits = tuple(s for s in TABLE_SPLITS if s in metrics) if splits is None else splits
    groups = next((metrics[s]["group_acc"] for s in splits if "group_acc" in metrics[s]), {})
    gap = "train" in splits and "test" in splits and any(memorization_gap(metrics, g) is not None for g in groups)
    head = "| group | " + " | ".join(f"{s} n | {s} acc %" for s in splits) + (f" | {GAP_HEAD}" if gap else "") + " |"
    rule = "|---|" + "---:|---:|" * len(splits) + ("---:|" if gap else "")
    rows = [head, rule]
    for group in groups:
        cells = []
        for s in splits:
            cells += [str(metrics[s].get("group_count", {}).get(group, "-")), _pct(metrics[s].get("group_acc", {}).get(group))]
        if gap:
            value = memorization_gap(metrics, group)
            cells.append("-" if value is None else f"{value:+.1f}")
        rows.append(f"| {group} | " + " | ".join(cells) + " |")
    for key, label in SUMMARY_KEYS:
        if any(key in metrics[s] for s in splits):
            cells = []
            for s in splits:
                cells += ["", f"**{_pct(metrics[s].get(key))}**"]
            rows.append(f"| **{label}** | " + " | ".join(cells + ([""] if gap else [])) + " |")
    return "\n".join(rows) + "\n"


def train_eval_note(stage: dict[str, Any]) -> str:
    """Which `train_eval` rule produced a stage's train columns, with the counts ("" if none)."""
    found = stage.get("train_eval")
    if not found:
        return ""
    if found["rule"] == "full":
        return (f"Train columns: every training example ({found['of']}), in eval mode without augmentation "
                f"(`train_eval` full).")
    cap = found["rule"].split(":")[1]
    return (f"Train columns: `train_eval` {found['rule']}, a fixed subset of up to {cap} examples of every group "
            f"(of every class without attribute labels; all of a smaller one), drawn once from the seed: "
            f"{found['examples']} of {found['of']} training examples (per group: `train n`).")


def markdown(summary: dict[str, Any], config: Any) -> str:
    selected = summary["selected"]
    lines = [
        "# spurcore run report",
        "",
        f"Dataset `{config.dataset.name}`, backbone `{config.backbone.name}`, seed {config.seed}. "
        f"Selector `{selected['selector']}` chose epoch {selected['epoch']} of stage `{selected['stage']}`.",
        "Accuracies in percent; \"average\" is the plain accuracy over every example of the split; "
        "the memorization gap of a group is its train accuracy minus its test accuracy, in points.",
        "",
    ]
    for stage in summary["stages"]:
        chosen = stage["selected"]
        how = f"epoch {chosen['epoch']}, chosen by `{chosen['selector']}`" if chosen["selector"] else "post hoc"
        if "variant" in chosen:
            how += f", inference variant `{chosen['variant']}`"
        if "start_score" in chosen:
            how += f"; score {chosen['score']:.4f}, the starting model's (epoch 0) {chosen['start_score']:.4f}"
        note = train_eval_note(stage)
        lines += [f"## Stage `{stage['name']}` ({stage['method']}, {how})", "", *([note, ""] if note else []),
                  group_table(stage["metrics"]), ""]
    return "\n".join(lines)


def plot_group_acc(summary: dict[str, Any], path: str | Path) -> None:
    """Per-group accuracy of the final model, val and test side by side, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = summary["metrics"]
    groups = list(metrics["test"].get("group_acc", {}))
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(groups) + 2), 4.2))
    x = np.arange(len(groups))
    for offset, split in ((-0.2, "val"), (0.2, "test")):
        values = [100 * (metrics[split]["group_acc"].get(g) or 0) for g in groups]
        bars = ax.bar(x + offset, values, width=0.4, label=split)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    if not groups:
        ax.text(0.5, 0.5, "no attribute labels: no groups to show", ha="center", transform=ax.transAxes)
    if "avg_acc" in metrics["test"]:
        ax.axhline(100 * metrics["test"]["avg_acc"], color="gray", ls="--", lw=1, label="test average")
    ax.set_xticks(x, groups, rotation=15)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    stage = summary["stages"][-1]["name"]
    ax.set_title(f"Per-group accuracy, stage {stage}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    atomic.write_figure(fig, path, dpi=120)


def plot_group_acc_epochs(results: list[dict[str, Any]], path: str | Path) -> bool:
    """Train (solid) and test (dashed) accuracy of every group over the epochs of each training
    stage, one panel per stage, the selected epoch marked; written atomically. Returns False,
    writing nothing, when no training stage evaluated train with group accuracies."""
    stages = [r for r in results if r["kind"] == "train"
              and all("group_acc" in h["metrics"].get(s, {}) for h in r["history"] for s in ("train", "test"))]
    if not stages:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(1, len(stages), figsize=(6.2 * len(stages), 4.8), squeeze=False, sharey=True)
    colours = plt.get_cmap("tab10").colors
    for ax, stage in zip(axes[0], stages):
        history = stage["history"]
        epochs = [h["epoch"] for h in history]
        last = history[-1]["metrics"]
        for k, group in enumerate(last["test"]["group_acc"]):
            colour = colours[k % len(colours)]
            for split, style in (("train", "-"), ("test", "--")):
                values = [100 * v if (v := h["metrics"][split]["group_acc"].get(group)) is not None else float("nan")
                          for h in history]
                ax.plot(epochs, values, style, color=colour, marker="o", ms=3, lw=1.6)
        selected = stage["selected"]["epoch"]
        ax.axvline(selected, color="gray", ls=":", lw=1.5)
        rule = (stage.get("train_eval") or {}).get("rule", "full")
        ax.set_title(f"stage {stage['name']}: train {rule}, selected epoch {selected}", fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_xticks(epochs if len(epochs) <= 20 else epochs[:: max(1, len(epochs) // 10)])
        ax.set_ylim(0, 103)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (%)")
    groups = list(stages[-1]["history"][-1]["metrics"]["test"]["group_acc"])
    counts = stages[-1]["history"][-1]["metrics"]["train"].get("group_count", {})
    handles = [Line2D([], [], color=colours[k % len(colours)], lw=3,
                      label=f"{g} (train n={counts[g]})" if g in counts else g) for k, g in enumerate(groups)]
    handles += [Line2D([], [], color="black", ls="-", label="train"), Line2D([], [], color="black", ls="--", label="test"),
                Line2D([], [], color="gray", ls=":", lw=1.5, label="selected epoch")]
    columns = min(len(handles), 2 * len(stages))  # long group names: two columns per panel's width
    fig.legend(handles=handles, loc="lower center", ncol=columns, fontsize=8, frameon=False)
    fig.suptitle("Accuracy per group over training: train (solid) vs test (dashed)", fontsize=11)
    fig.tight_layout(rect=(0, 0.015 + 0.045 * -(-len(handles) // columns), 1, 1))
    atomic.write_figure(fig, path, dpi=120)
    return True
