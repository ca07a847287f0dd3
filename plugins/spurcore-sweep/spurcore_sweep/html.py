"""`spur report DIR --html`: one self-contained page for a run or a sweep, `DIR/report.html`.

Everything is inside the file: figures as `data:` URIs, no script, no stylesheet or font from
elsewhere, so it opens from the file system with no server and no network. For a run: its
per-group table (train, val, test), its figures, its config, the tracer's top neurons and
effects for every `trace/*/trace.json`, and, for every memorization scores file given
(`--scores`) or found in the run folder, a gallery of the most memorized training images per
group with their scores. For a sweep: the comparison (`spur report`'s table and `wga.png`),
then every finished run as above, folded.

The scores file is read in its documented layout only (`train/index`, `train/memorization`,
`train/group` and the group names; docs/methods/memorization-scores.md), and the images from
the run's own dataset (`open_run`), so this plugin needs no other.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spurcore.api import PluginManager, SpurcoreError, atomic

PAGE = "report.html"
STYLE = """body{font:14px/1.4 sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:2px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}img{max-width:100%}pre{background:#f4f4f4;padding:.5em;overflow:auto}
.gallery figure{display:inline-block;margin:4px;text-align:center;font-size:11px}
.gallery img{width:64px;height:64px;image-rendering:pixelated}details{margin:1em 0}"""


class HTMLReportError(SpurcoreError):
    pass


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def image(path: Path, alt: str) -> str:
    return f'<p><img src="{data_uri(path.read_bytes())}" alt="{html.escape(alt)}"></p>'


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], name: str) -> str:
    """An HTML table; `name` goes into its `data-table` attribute (the tests find tables by it)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table data-table="{html.escape(name)}"><tr>{head}</tr>{body}</table>'


def markdown_tables(text: str, name: str) -> str:
    """The markdown `spur report` prints, as HTML: its tables as tables, other lines as paragraphs."""
    out, rows = [], []

    def flush() -> None:
        if rows:
            out.append(table(rows[0], rows[1:], name))
            rows.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip().replace("**", "") for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-:") for c in cells):
                rows.append(cells)
        else:
            flush()
            if line.strip():
                out.append(f"<p>{html.escape(line)}</p>")
    flush()
    return "\n".join(out)


def _percent(value: Any) -> str:
    return "" if value is None else f"{100 * float(value):.1f}"


def group_table(summary: dict[str, Any]) -> str:
    """Per group: examples and accuracy on every split of the selected model; then the average
    and the worst group."""
    metrics = summary.get("metrics", {})
    splits = [s for s in metrics if isinstance(metrics[s], dict) and "group_acc" in metrics[s]]
    if not splits:
        return "<p>No per-group metrics in summary.json.</p>"
    groups = list(metrics[splits[0]]["group_acc"])
    header = ["group", *(f"{s} {what}" for s in splits for what in ("n", "acc %"))]
    rows = [[g, *(v for s in splits for v in (metrics[s].get("group_count", {}).get(g, ""),
                                               _percent(metrics[s]["group_acc"].get(g))))] for g in groups]
    for key, label in (("avg_acc", "average"), ("worst_group_acc", "worst group")):
        rows.append([label, *(v for s in splits for v in ("", _percent(metrics[s].get(key))))])
    return table(header, rows, "groups")


def trace_section(folder: Path) -> str:
    """A tracer's output folder: the top neurons of every selection, the effects' summary, the figures."""
    trace = json.loads((folder / "trace.json").read_text())
    groups = trace.get("groups", [])
    parts = [f"<h4>Trace: {html.escape(folder.name)} (stage {trace.get('stage')}, epoch {trace.get('epoch')})</h4>"]
    top = trace.get("scores", {}).get("top", {})
    rows = []
    for selection, neurons in top.items():
        criterion, _, group = selection.partition(":")
        label = f"{criterion}, {groups[int(group)]}" if group.isdigit() and int(group) < len(groups) else selection
        rows.append([label, ", ".join(f"{n['neuron']} ({n['score']:.3g})" for n in neurons)])
    parts.append(table(["selection", "top neurons (score)"], rows, "trace-neurons"))
    summary = trace.get("summary", [])
    parts.append(table(["criterion", "intervention", "scope", "split", "minority |change|", "majority |change|"],
                       [[r["criterion"], r["intervention"], r["scope"], r["split"], f"{r['minority_abs']:.1f}",
                         f"{r['majority_abs']:.1f}"] for r in summary], "trace-effects"))
    parts += [image(png, png.stem) for png in sorted(folder.glob("*.png"))]
    return "\n".join(parts)


def _thumbnail(values: np.ndarray) -> bytes:
    """An input (C, H, W), (H, W) or a vector (one row) as a PNG, each scaled to its own range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[None, :]
    if values.ndim == 3:
        values = values[0] if values.shape[0] == 1 else np.moveaxis(values[:3], 0, -1)
    low, high = values.min(), values.max()
    values = (values - low) / (high - low) if high > low else np.zeros_like(values)
    buffer = io.BytesIO()
    plt.imsave(buffer, values, cmap="gray" if values.ndim == 2 else None, format="png")
    return buffer.getvalue()


def read_scores(path: Path) -> dict[str, Any]:
    """The training split's memorization, group and group names of a scores file, or an error naming it."""
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            train = handle["train"]
            return {"memorization": np.asarray(train["memorization"][()], dtype=np.float64),
                    "group": np.asarray(train["group"][()]), "index": np.asarray(train["index"][()]),
                    "names": [str(n) for n in train.attrs["group_names"]]}
    except (OSError, KeyError) as exc:
        raise HTMLReportError(f"{path}: not a scores file of `spur memorization` ({type(exc).__name__}: {exc})") from None


def gallery(path: Path, scores: dict[str, Any], inputs: Any, count: int) -> str:
    """The `count` most memorized training images of every group, with their scores."""
    parts = [f"<h4>Most memorized training images per group ({html.escape(str(path))})</h4>"]
    memorization = scores["memorization"]
    for g, name in enumerate(scores["names"]):
        rows = np.flatnonzero((scores["group"] == g) & ~np.isnan(memorization))
        rows = rows[np.argsort(-memorization[rows], kind="stable")][:count]
        figures = "".join(
            f'<figure><img src="{data_uri(_thumbnail(np.asarray(inputs[int(scores["index"][i])])))}" '
            f'alt="training example {int(scores["index"][i])}"><figcaption>#{int(scores["index"][i])}<br>'
            f'{memorization[i]:.2f}</figcaption></figure>' for i in rows)
        parts.append(f'<p>{html.escape(name)}</p><div class="gallery" data-group="{html.escape(name)}">{figures}</div>')
    return "\n".join(parts)


def run_section(run: Path, plugins: PluginManager, scores: Sequence[Path], count: int) -> str:
    summary = json.loads((run / "summary.json").read_text())
    selected = summary.get("selected", {})
    parts = [f"<p>Selected: stage {html.escape(str(selected.get('stage')))}, epoch {selected.get('epoch')} "
             f"({html.escape(str(selected.get('selector')))}).</p>", group_table(summary)]
    parts += [image(run / name, name) for name in ("group_acc.png", "group_acc_epochs.png") if (run / name).exists()]
    for folder in sorted(p.parent for p in run.glob("trace/*/trace.json")):
        parts.append(trace_section(folder))
    files = [*scores, *sorted(run.rglob("scores.h5"))]
    if files:
        from spurcore.api import open_run

        inputs = open_run(run, plugins).data.splits["train"].inputs
        for path in files:
            found = read_scores(path)
            if len(found["memorization"]) != len(inputs):
                parts.append(f"<p>{html.escape(str(path))}: scores for {len(found['memorization'])} training "
                             f"examples, but this run has {len(inputs)}; no gallery.</p>")
                continue
            parts.append(gallery(path, found, inputs, count))
    if (run / "config.toml").exists():
        parts.append(f"<h4>Config</h4><pre>{html.escape((run / 'config.toml').read_text())}</pre>")
    return "\n".join(parts)


def runs_below(folder: Path) -> list[Path]:
    """Every finished run folder below `folder` (a `summary.json` beside a `config.toml`)."""
    return sorted(p.parent for p in folder.rglob("summary.json") if (p.parent / "config.toml").exists())


def write_page(folder: Path, plugins: PluginManager, selectors: Sequence[str], rows_by: Sequence[str] = (),
               scores: Sequence[Path] = (), gallery_size: int = 8) -> Path:
    """`folder/report.html` for a sweep (`sweep.json`) or a run (`summary.json`)."""
    folder = Path(folder)
    title = f"spurcore report: {folder.name}"
    if (folder / "sweep.json").exists():
        from spurcore_sweep import comparison

        text, figure = comparison.write(folder, plugins, selectors, "md", rows_by)
        body = [f"<h1>{html.escape(title)}</h1>", "<h2>Comparison</h2>", markdown_tables(text, "comparison"),
                image(figure, "worst-group accuracy per method"), "<h2>Runs</h2>"]
        for run in runs_below(folder):
            name = html.escape(str(run.relative_to(folder)))
            body.append(f"<details><summary>{name}</summary><h3>{name}</h3>"
                        f"{run_section(run, plugins, scores, gallery_size)}</details>")
    elif (folder / "summary.json").exists():
        body = [f"<h1>{html.escape(title)}</h1>", run_section(folder, plugins, scores, gallery_size)]
    else:
        raise HTMLReportError(f"{folder}: neither a sweep (sweep.json) nor a finished run (summary.json)")
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    path = folder / PAGE
    atomic.write_text(path, page)
    return path
