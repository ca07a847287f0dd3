"""Figures of a trace, drawn from what trace.json holds (matplotlib, Agg backend).

* `group_bars_train.png`, `group_bars_test.png` (the paper's Figures 2, 4, 5): per criterion
  (columns) and intervention (rows), each group's absolute accuracy change for k = 1, 2, 3,
  with the random non-critical control; minority groups are starred.
* `layer_heatmap.png` (Figure 7): zeroing the top-k neurons of one layer at a time;
  layer x group, absolute change in training accuracy.
* `rank_overlap.png` (Figure 3): magnitude percentile ranks of the top-gradient neurons, and
  the converse.
* `sensitive_layers.png`: per group, how many layers move its accuracy by >= 1 point when
  rewound, per offset, on train and test.

When the trace marks the top-memorized training examples (`marked`), the train figures show
them after the groups, set apart: hatched red-edged bars past a dotted line, a row below a
line in the heatmap, named with their count. Under the per-group gradient their value is the
mean over every group's selection, since they have none of their own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from spurcore.api import atomic  # noqa: E402

MARKED = {"hatch": "///", "edgecolor": "tab:red"}  # how the marked examples' bars are drawn


def _save(fig: Any, path: Path) -> str:
    atomic.write_figure(fig, path, dpi=110, bbox_inches="tight")
    return path.name


def _rows(result: dict, split: str) -> tuple[list[str], dict | None]:
    """The groups, then on train the marked examples' row when the trace has one."""
    marked = result.get("marked") if split == "train" else None
    return result["groups"] + ([marked["label"]] if marked else []), marked


def _label(row: str, result: dict) -> str:
    marked = result.get("marked")
    if marked and row == marked["label"]:
        return f"{row}\n(n={marked['count']})"
    return f"{row} *" if row in result["minority_groups"] else row


def _value(effects: list[dict], **match: Any) -> float:
    """The absolute change of the matching record (the group's own selection for gradient; the
    mean over every selection for the marked examples, which have none of their own)."""
    found = [e["abs"] for e in effects if all(e.get(k) == v for k, v in match.items())
             and (e.get("marked") or e["selected_for"] in (None, e["group"]))]
    return float(np.mean(found)) if found else np.nan


def _mark_bars(ax: Any, containers: list[Any], n_groups: int) -> None:
    """Hatch the bars after the groups' (the marked examples') and set them apart by a line."""
    for container in containers:
        for patch in container.patches[n_groups:]:
            patch.set(**MARKED)
    ax.axvline(n_groups - 0.5, color=MARKED["edgecolor"], lw=0.8, ls=":")


def _legend(ax: Any, marked: dict | None) -> None:
    handles, _ = ax.get_legend_handles_labels()
    if marked:
        handles.append(Patch(facecolor="white", **MARKED, label=f"hatched: {marked['label']}"))
    ax.legend(handles=handles, fontsize=7)


def _caption(fig: Any, marked: dict | None, where: str) -> None:
    """Under everything drawn so far (the figure is laid out already), what the marked examples are."""
    if marked:
        bottom = fig.get_tightbbox().y0 / fig.get_figheight()
        fig.text(0.5, bottom, f"{marked['label']} ({where}): the {marked['count']} training examples with the highest "
                 f"memorization score (>= {marked['threshold']:.2f}) in {Path(marked['file']).name}; not a group, "
                 f"neither minority nor majority", ha="center", va="top", fontsize=8)


def _variants(effects: list[dict]) -> list[tuple[str, float | None]]:
    seen = []
    for e in effects:
        if e["scope"] == "global" and (e["intervention"], e["sigma"]) not in seen:
            seen.append((e["intervention"], e["sigma"]))
    order = {"zero": 0, "init": 1, "noise": 2, "control": 3}
    return sorted(seen, key=lambda v: (order.get(v[0], 9), v[1] or 0))


def group_bars(result: dict, split: str, out: Path) -> str | None:
    effects = [e for e in result["effects"] if e["split"] == split and e["scope"] == "global"]
    if not effects:
        return None
    criteria = list(dict.fromkeys(e["criterion"] for e in effects))
    variants = [v for v in _variants(effects) if v[0] != "control"]
    ks = sorted({e["k"] for e in effects})
    rows, marked = _rows(result, split)
    fig, axes = plt.subplots(len(variants), len(criteria), figsize=(4.2 * len(criteria), 2.8 * len(variants)),
                             squeeze=False, sharey="row")
    width = 0.8 / (len(ks) + 1)
    x = np.arange(len(rows))
    colors = plt.cm.Blues(np.linspace(0.45, 0.95, len(ks)))
    for r, (kind, sigma) in enumerate(variants):
        for c, criterion in enumerate(criteria):
            ax = axes[r][c]
            bars = []
            for i, k in enumerate(ks):
                values = [_value(effects, criterion=criterion, intervention=kind, sigma=sigma, k=k, group=g) for g in rows]
                bars.append(ax.bar(x + (i - len(ks) / 2) * width, values, width, color=colors[i], label=f"top-{k}"))
            control = [np.nanmean([_value(effects, criterion=criterion, intervention="control", k=k, group=g) for k in ks])
                       for g in rows]
            bars.append(ax.bar(x + (len(ks) - len(ks) / 2) * width, control, width, color="0.7",
                               label="control (mean over k)"))
            if marked:
                _mark_bars(ax, bars, len(result["groups"]))
            ax.set_xticks(x, [_label(g, result) for g in rows], rotation=20, fontsize=7)
            what = kind if sigma is None else f"{kind} (sigma={sigma})"
            ax.set_title(f"{criterion}: {what}", fontsize=9)
            if c == 0:
                ax.set_ylabel(f"|change| in {split} acc (points)", fontsize=8)
    _legend(axes[0][0], marked)
    fig.suptitle(f"{result['dataset']}, stage {result['stage']} epoch {result['epoch']}: group accuracy change "
                 f"on {split} after changing the top-k neurons (* minority)", fontsize=10)
    fig.tight_layout()
    _caption(fig, marked, "after the dotted line")
    return _save(fig, out / f"group_bars_{split}.png")


def layer_heatmap(result: dict, out: Path) -> str | None:
    effects = [e for e in result["effects"] if e["scope"] == "per-layer" and e["split"] == "train"]
    if not effects:
        return None
    k = max(e["k"] for e in effects)
    criteria = list(dict.fromkeys(e["criterion"] for e in effects))
    layers = [l["path"] for l in result["neurons"]["layers"]]
    rows, marked = _rows(result, "train")
    grids = []
    for criterion in criteria:
        grid = np.array([[_value(effects, criterion=criterion, layer=l, k=k, group=g) for l in layers] for g in rows])
        grids.append(grid)
    top = max(1e-9, float(np.nanmax([np.nanmax(g) if np.isfinite(g).any() else 0 for g in grids])))
    fig, axes = plt.subplots(1, len(criteria), figsize=(1.0 + 0.9 * len(layers) * len(criteria), 1.2 + 0.5 * len(rows)),
                             squeeze=False)
    for n, (ax, criterion, grid) in enumerate(zip(axes[0], criteria, grids)):
        image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=top, aspect="auto")
        ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(rows)), [_label(g, result) for g in rows] if n == 0 else [], fontsize=7)
        if marked:
            ax.axhline(len(result["groups"]) - 0.5, color="w", lw=2)
            if n == 0:
                ax.get_yticklabels()[-1].set_color(MARKED["edgecolor"])
        ax.set_title(f"{criterion}: zero top-{k} per layer", fontsize=9)
        for (i, j), v in np.ndenumerate(grid):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=6, color="w" if v < top / 2 else "k")
    fig.colorbar(image, ax=axes[0].tolist(), label="|change| in train acc (points)")
    _caption(fig, marked, "below the white line")
    return _save(fig, out / "layer_heatmap.png")


def rank_histograms(result: dict, out: Path) -> str | None:
    overlap = result.get("rank_overlap")
    if not overlap:
        return None
    fig, axes = plt.subplots(len(overlap), 2, figsize=(8, 2.6 * len(overlap)), squeeze=False)
    for row, entry in zip(axes, overlap):
        bins = np.array(entry["bins"])
        for ax, key, title in ((row[0], "top_gradient_hist", "magnitude rank of top-gradient neurons"),
                               (row[1], "top_magnitude_hist", "gradient rank of top-magnitude neurons")):
            ax.bar(bins[:-1], entry[key], width=np.diff(bins), align="edge", edgecolor="k", color="tab:orange")
            ax.set_xlim(0, 100)
            ax.set_xlabel("percentile rank among all neurons (100: largest)", fontsize=8)
            ax.set_title(f"top {entry['percent']}% ({entry['count']} neuron(s), pooled over groups): {title}", fontsize=8)
    fig.tight_layout()
    return _save(fig, out / "rank_overlap.png")


def sensitive_layers(result: dict, out: Path) -> str | None:
    sensitive = result["rewinding"]["sensitive_layers"]
    if not sensitive or not any(sensitive.values()):
        return None
    splits = list(sensitive)
    fig, axes = plt.subplots(1, len(splits), figsize=(4.5 * len(splits), 3), squeeze=False, sharey=True)
    n_layers = len(result["neurons"]["layers"])
    for ax, split in zip(axes[0], splits):
        rows, marked = _rows(result, split)
        offsets = list(sensitive[split])
        width = 0.8 / max(1, len(offsets))
        bars = []
        for i, offset in enumerate(offsets):
            values = [sensitive[split][offset][g] for g in rows]
            bars.append(ax.bar(np.arange(len(rows)) + (i - len(offsets) / 2 + 0.5) * width, values, width,
                               label=f"{offset} epochs back"))
        if marked:
            _mark_bars(ax, bars, len(result["groups"]))
        ax.set_xticks(range(len(rows)), [_label(g, result) for g in rows], rotation=20, fontsize=7)
        ax.set_ylim(0, n_layers + 0.5)
        ax.set_title(f"{split}: layers moving the group by >= {result['rewinding']['threshold']} point", fontsize=9)
        _legend(ax, marked)
    axes[0][0].set_ylabel(f"sensitive layers (of {n_layers})")
    fig.tight_layout()
    _caption(fig, result.get("marked"), "train, after the dotted line")
    return _save(fig, out / "sensitive_layers.png")


def draw_all(result: dict, out: Path) -> list[str]:
    drawn = [group_bars(result, "train", out), group_bars(result, "test", out), layer_heatmap(result, out),
             rank_histograms(result, out), sensitive_layers(result, out)]
    return [name for name in drawn if name]
