"""The comparison report of a sweep: per method and per selector, the settings the selector
chooses and the mean ± std over seeds of test worst-group and average accuracy there.

A selector chooses among a method's settings by its score averaged over seeds, each seed's
score taken on the model that run kept (the epoch its own pipeline selector chose). Test
numbers are never looked at to choose. Every row says which attribute labels it needed: those
the method read, those its runs' epoch selector read, and whether the report's selector read them.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from spurcore import atomic
from spurcore.config import load_pipeline
from spurcore.context import Candidate
from spurcore.errors import SpurcoreError
from spurcore.plugins import PluginManager
from spurcore.sweep import read_manifest

FORMATS = ("md", "csv", "json")


class ReportError(SpurcoreError):
    pass


@attrs.frozen(kw_only=True)
class Run:
    """A finished trial: where it is, its seed, its summary, and which labels it read."""

    path: Path
    seed: int
    summary: dict[str, Any]
    labels: tuple[str, ...]


@attrs.frozen(kw_only=True)
class Row:
    method: str
    selector: str
    selector_reads_attributes: bool
    labels: tuple[str, ...]
    settings: dict[str, Any]
    seeds: tuple[int, ...]
    val_score: float
    test_wga: tuple[float, ...]
    test_avg: tuple[float, ...]

    @property
    def wga(self) -> tuple[float, float]:
        return _mean_std(self.test_wga)

    @property
    def avg(self) -> tuple[float, float]:
        return _mean_std(self.test_avg)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    array = 100 * np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std())  # population std over seeds, as in docs/results


def labels_read(run_dir: Path, plugins: PluginManager) -> tuple[str, ...]:
    """Where a run (and the run it started from) read attribute labels: `<method>: <split>`
    per stage, `epoch by <selector>: val`."""
    from spurcore.runner import plan

    planned = plan(load_pipeline(run_dir / "config.toml"), plugins)
    found = list(labels_read(Path(planned.config.init.run), plugins)) if planned.config.init else []
    found += [f"{s.spec.name}: {split}" for s in planned.stages for split in s.spec.attribute_splits(s.options)]
    if planned.selector.needs_attributes and any(s.spec.kind == "train" for s in planned.stages):
        found.append(f"epoch by {planned.selector.name}: val")
    return tuple(dict.fromkeys(found))


def collect(out: Path, plugins: PluginManager) -> tuple[dict[str, dict[str, list[Run]]], list[dict[str, Any]]]:
    """Finished runs by method and settings (as JSON text), and the trials that did not finish."""
    manifest = read_manifest(out)
    methods: dict[str, dict[str, list[Run]]] = {}
    unfinished = []
    for trial in manifest["trials"]:
        run_dir = Path(out) / trial["path"]
        if not (run_dir / "summary.json").exists():
            unfinished.append(trial)
            continue
        run = Run(path=run_dir, seed=trial["seed"], summary=json.loads((run_dir / "summary.json").read_text()),
                  labels=labels_read(run_dir, plugins))
        key = json.dumps(trial["settings"], sort_keys=True)
        methods.setdefault(trial["method"], {}).setdefault(key, []).append(run)
    return methods, unfinished


def score(selector: Any, run: Run, plugins: PluginManager) -> float:
    """The selector's score of the model a run kept (SFit rebuilds it from the checkpoint)."""
    from spurcore.runner import open_run

    opened: list[Any] = []

    def runner() -> Any:
        if not opened:
            opened.append(open_run(run.path, plugins))
        return opened[0]

    chosen = run.summary["selected"]
    candidate = Candidate(stage=chosen["stage"], epoch=chosen["epoch"], metrics=run.summary["metrics"],
                          load_model=lambda: runner().load_model(), data=_LazyData(runner))
    return float(selector.score(candidate))


class _LazyData:
    """The run's dataset, built only if the selector reads it."""

    def __init__(self, runner: Any) -> None:
        self._runner = runner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runner().run.data, name)


def rows(out: Path, plugins: PluginManager, selectors: Sequence[str]) -> tuple[list[Row], list[dict[str, Any]]]:
    """One row per (method, selector), and the trials without a finished run."""
    specs = [plugins.get("selectors", name) for name in selectors]
    methods, unfinished = collect(out, plugins)
    if not methods:
        raise ReportError(f"{out}: no finished run yet ({len(unfinished)} trial(s) unfinished)")
    table = []
    for method, by_settings in methods.items():
        for selector in specs:
            scored = []
            for key, runs in by_settings.items():
                missing = [m for m in selector.metrics if m not in runs[0].summary["metrics"]["val"]]
                if missing:
                    continue
                scored.append((float(np.mean([score(selector, r, plugins) for r in runs])), key, runs))
            if not scored:
                continue
            best = max(scored, key=lambda item: item[0])  # ties: the first settings
            val_score, key, runs = best
            runs = sorted(runs, key=lambda r: r.seed)
            table.append(Row(
                method=method, selector=selector.name, selector_reads_attributes=selector.needs_attributes,
                labels=tuple(dict.fromkeys(label for r in runs for label in r.labels)),
                settings=json.loads(key), seeds=tuple(r.seed for r in runs), val_score=val_score,
                test_wga=tuple(r.summary["metrics"]["test"]["worst_group_acc"] for r in runs),
                test_avg=tuple(r.summary["metrics"]["test"]["avg_acc"] for r in runs),
            ))
    return table, unfinished


def _settings(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in settings.items()) or "default"


def _labels(row: Row) -> str:
    used = list(row.labels) + (["settings by selector: val"] if row.selector_reads_attributes else [])
    return "; ".join(used) or "none"


def markdown(table: Sequence[Row], unfinished: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| method | selector | test WGA % | test average % | seeds | attribute labels read | settings chosen |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for row in table:
        (wm, ws), (am, as_) = row.wga, row.avg
        tag = " (reads attributes)" if row.selector_reads_attributes else ""
        lines.append(f"| {row.method} | {row.selector}{tag} | {wm:.1f} ± {ws:.1f} | {am:.1f} ± {as_:.1f} "
                     f"| {len(row.seeds)} | {_labels(row)} | {_settings(row.settings)} |")
    lines += ["", "Mean ± std (population) over seeds, in percent. A selector chooses each method's settings "
              "by its validation score averaged over seeds; within a run, the epoch is the one the "
              "pipeline's own selector chose."]
    if unfinished:
        lines += ["", f"{len(unfinished)} trial(s) without a finished run:"]
        lines += [f"- {t['path']}: {(t.get('record') or {}).get('error') or (t.get('record') or {}).get('status', 'not run yet')}"
                  for t in unfinished]
    return "\n".join(lines) + "\n"


def as_csv(table: Sequence[Row]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "selector", "selector_reads_attributes", "test_wga_mean", "test_wga_std",
                     "test_avg_mean", "test_avg_std", "seeds", "attribute_labels_read", "settings"])
    for row in table:
        writer.writerow([row.method, row.selector, row.selector_reads_attributes, f"{row.wga[0]:.2f}",
                         f"{row.wga[1]:.2f}", f"{row.avg[0]:.2f}", f"{row.avg[1]:.2f}",
                         " ".join(map(str, row.seeds)), "; ".join(row.labels), json.dumps(row.settings)])
    return buffer.getvalue()


def as_json(table: Sequence[Row], unfinished: Sequence[dict[str, Any]]) -> str:
    data = {"rows": [{**attrs.asdict(r), "test_wga_mean_std": r.wga, "test_avg_mean_std": r.avg} for r in table],
            "unfinished": [{"path": t["path"], "record": t.get("record")} for t in unfinished]}
    return json.dumps(data, indent=2) + "\n"


def plot_wga(table: Sequence[Row], path: Path) -> None:
    """Test worst-group accuracy per method (one bar per selector), mean with std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r.method for r in table))
    selectors = list(dict.fromkeys(r.selector for r in table))
    width = 0.8 / len(selectors)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(methods) * max(1, len(selectors)) ** 0.5 + 2), 4.2))
    for k, selector in enumerate(selectors):
        found = {r.method: r for r in table if r.selector == selector}
        xs = [i + (k - (len(selectors) - 1) / 2) * width for i, m in enumerate(methods) if m in found]
        stats = [found[m].wga for m in methods if m in found]
        bars = ax.bar(xs, [s[0] for s in stats], width=width, yerr=[s[1] for s in stats], capsize=3, label=selector)
        ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=2)
    ax.set_xticks(range(len(methods)), methods, rotation=15)
    ax.set_ylabel("test worst-group accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Worst-group accuracy per method (mean ± std over seeds)")
    ax.legend(title="settings chosen by", fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2),
              ncol=len(selectors), frameon=False)
    fig.tight_layout()
    with atomic.atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=120)
    plt.close(fig)


def write(out: Path, plugins: PluginManager, selectors: Sequence[str], fmt: str) -> tuple[str, Path]:
    """Write report.md, report.csv, report.json and wga.png into the sweep directory; return the
    text in `fmt` and the figure's path."""
    if fmt not in FORMATS:
        raise ReportError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    table, unfinished = rows(out, plugins, selectors)
    if not table:
        raise ReportError(f"{out}: no selector among {', '.join(selectors)} could score these runs")
    texts = {"md": markdown(table, unfinished), "csv": as_csv(table), "json": as_json(table, unfinished)}
    for ext, text in texts.items():
        atomic.write_text(Path(out) / f"report.{ext}", text)
    figure = Path(out) / "wga.png"
    plot_wga(table, figure)
    return texts[fmt], figure
