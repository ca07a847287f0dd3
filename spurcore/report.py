"""Human-readable results: the per-group table (report.md, `spur show`) and its figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spurcore import atomic

SUMMARY_KEYS = (("avg_acc", "average (all examples)"), ("worst_group_acc", "worst group"),
                ("worst_class_acc", "worst class"))


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def group_table(metrics: dict[str, dict[str, Any]], splits: tuple[str, ...] = ("val", "test")) -> str:
    """A markdown table: one row per group (count and accuracy per split), then the summaries."""
    head = "| group | " + " | ".join(f"{s} n | {s} acc %" for s in splits) + " |"
    rule = "|---|" + "---:|---:|" * len(splits)
    rows = [head, rule]
    groups = next((metrics[s]["group_acc"] for s in splits if "group_acc" in metrics[s]), {})
    for group in groups:
        cells = []
        for s in splits:
            cells += [str(metrics[s].get("group_count", {}).get(group, "-")), _pct(metrics[s].get("group_acc", {}).get(group))]
        rows.append(f"| {group} | " + " | ".join(cells) + " |")
    for key, label in SUMMARY_KEYS:
        if any(key in metrics[s] for s in splits):
            cells = []
            for s in splits:
                cells += ["", f"**{_pct(metrics[s].get(key))}**"]
            rows.append(f"| **{label}** | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def markdown(summary: dict[str, Any], config: Any) -> str:
    selected = summary["selected"]
    lines = [
        "# spurcore run report",
        "",
        f"Dataset `{config.dataset.name}`, backbone `{config.backbone.name}`, seed {config.seed}. "
        f"Selector `{selected['selector']}` chose epoch {selected['epoch']} of stage `{selected['stage']}`.",
        "Accuracies in percent; \"average\" is the plain accuracy over every example of the split.",
        "",
    ]
    for stage in summary["stages"]:
        chosen = stage["selected"]
        how = f"epoch {chosen['epoch']}, chosen by `{chosen['selector']}`" if chosen["selector"] else "post hoc"
        lines += [f"## Stage `{stage['name']}` ({stage['method']}, {how})", "", group_table(stage["metrics"]), ""]
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
    with atomic.atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=120)
    plt.close(fig)
