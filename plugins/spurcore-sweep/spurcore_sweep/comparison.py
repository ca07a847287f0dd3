"""The comparison report of a sweep: per method and per selector, the settings the selector
chooses and the mean ± std over seeds of test worst-group and average accuracy there.

A selector chooses among a method's settings by its score averaged over seeds, each seed's
score taken on the model that run kept (the epoch its own pipeline selector chose). Test
numbers are never looked at to choose. Every row says which attribute labels it needed: those
the method read, those its runs' epoch selector read, and whether the report's selector read them.
With `--rows-by KEY`, a method whose settings have KEY is one row per value of it, each row
choosing among the settings with that value, so a setting's values compare at their best.
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

from spurcore.api import Candidate, PluginManager, RunDir, SpurcoreError, atomic
from spurcore_sweep.trials import read_manifest, short_key

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
    """One line of the report: a method (its settings with these `by` values, from
    `--rows-by`) under one selector, at the settings that selector chose."""

    method: str
    by: dict[str, Any] = attrs.field(factory=dict)
    selector: str
    selector_reads_attributes: bool
    selector_splits: tuple[str, ...]
    labels: tuple[str, ...]
    settings: dict[str, Any]
    seeds: tuple[int, ...]
    val_score: float
    test_wga: tuple[float, ...]
    test_avg: tuple[float, ...]

    @property
    def label(self) -> str:
        """The row's name: the method, and its `--rows-by` values (`prunedtwin (criterion=gradient)`)."""
        if not self.by:
            return self.method
        values = (f"{short_key(k).removeprefix(self.method + '.')}={v if isinstance(v, str) else json.dumps(v)}"
                  for k, v in self.by.items())
        return f"{self.method} ({', '.join(values)})"

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
    from spurcore.api import plan_saved

    planned = plan_saved(run_dir, plugins)
    found = list(labels_read(Path(planned.config.init.run), plugins)) if planned.config.init else []
    found += [f"{s.spec.name}: {split}" for s in planned.stages for split in s.spec.attribute_splits(s.options)]
    if planned.selector.needs_attributes and any(s.spec.kind == "train" for s in planned.stages):
        found += [f"epoch by {planned.selector.name}: {split}" for split in planned.selector.splits]
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
        run = Run(path=run_dir, seed=trial["seed"], summary=RunDir(run_dir).read_summary(),
                  labels=labels_read(run_dir, plugins))
        key = json.dumps(trial["settings"], sort_keys=True)
        methods.setdefault(trial["method"], {}).setdefault(key, []).append(run)
    return methods, unfinished


def readable(selector: Any, summary: dict[str, Any]) -> bool:
    """Whether a run's summary has every split and metric the selector reads (a run that did
    not evaluate train cannot be scored by a selector reading train)."""
    found = summary["metrics"]
    return all(split in found and all(m in found[split] for m in selector.metrics) for split in selector.splits)


def score(selector: Any, run: Run, plugins: PluginManager) -> float:
    """The selector's score of the model a run kept (SFit rebuilds it from the checkpoint)."""
    from spurcore.api import open_run

    opened: list[Any] = []

    def finished() -> Any:
        if not opened:
            opened.append(open_run(run.path, plugins))
        return opened[0]

    chosen = run.summary["selected"]
    candidate = Candidate(stage=chosen["stage"], epoch=chosen["epoch"], metrics=selector.visible(run.summary["metrics"]),
                          variant=chosen.get("variant"),
                          load_model=lambda: finished().load_model(), data=_LazyData(finished))
    return float(selector.score(candidate))


class _LazyData:
    """The run's dataset, built only if the selector reads it."""

    def __init__(self, finished: Any) -> None:
        self._finished = finished

    def __getattr__(self, name: str) -> Any:
        return getattr(self._finished().data, name)


def rows(out: Path, plugins: PluginManager, selectors: Sequence[str], rows_by: Sequence[str] = ()
         ) -> tuple[list[Row], list[dict[str, Any]]]:
    """One row per (method, its values of the `rows_by` keys, selector), and the trials
    without a finished run."""
    specs = [plugins.get("selectors", name) for name in selectors]
    methods, unfinished = collect(out, plugins)
    if not methods:
        raise ReportError(f"{out}: no finished run yet ({len(unfinished)} trial(s) unfinished)")
    known = {k for by_settings in methods.values() for key in by_settings for k in json.loads(key)}
    for key in rows_by:
        if key not in known:
            raise ReportError(f"--rows-by {key}: no finished run has this setting; "
                              f"settings: {', '.join(sorted(known)) or 'none'}")
    table = []
    for method, by_settings in methods.items():
        for by, group in split_by(by_settings, rows_by).items():
            for selector in specs:
                row = best(method, json.loads(by), group, selector, plugins)
                if row is not None:
                    table.append(row)
    return table, unfinished


def split_by(by_settings: dict[str, list[Run]], keys: Sequence[str]) -> dict[str, dict[str, list[Run]]]:
    """A method's settings (JSON text) grouped by their values of those `keys` they have,
    each group a row of its own."""
    groups: dict[str, dict[str, list[Run]]] = {}
    for key, runs in by_settings.items():
        settings = json.loads(key)
        groups.setdefault(json.dumps({k: settings[k] for k in keys if k in settings}), {})[key] = runs
    return groups


def best(method: str, by: dict[str, Any], by_settings: dict[str, list[Run]], selector: Any,
         plugins: PluginManager) -> Row | None:
    """The row of the settings the selector scores best, averaged over seeds (ties: the
    first); None when it can score none of them."""
    scored = []
    for key, runs in by_settings.items():
        if not readable(selector, runs[0].summary):
            continue
        scored.append((float(np.mean([score(selector, r, plugins) for r in runs])), key, runs))
    if not scored:
        return None
    val_score, key, runs = max(scored, key=lambda item: item[0])
    runs = sorted(runs, key=lambda r: r.seed)
    return Row(
        method=method, by=by, selector=selector.name, selector_reads_attributes=selector.needs_attributes,
        selector_splits=selector.splits,
        labels=tuple(dict.fromkeys(label for r in runs for label in r.labels)),
        settings=json.loads(key), seeds=tuple(r.seed for r in runs), val_score=val_score,
        test_wga=tuple(r.summary["metrics"]["test"]["worst_group_acc"] for r in runs),
        test_avg=tuple(r.summary["metrics"]["test"]["avg_acc"] for r in runs),
    )


def _settings(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in settings.items()) or "default"


def _labels(row: Row) -> str:
    used = list(row.labels) + ([f"settings by selector: {s}" for s in row.selector_splits]
                               if row.selector_reads_attributes else [])
    return "; ".join(used) or "none"


def markdown(table: Sequence[Row], unfinished: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| method | selector | test WGA % | test average % | seeds | attribute labels read | settings chosen |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for row in table:
        (wm, ws), (am, as_) = row.wga, row.avg
        tag = " (reads attributes)" if row.selector_reads_attributes else ""
        lines.append(f"| {row.label} | {row.selector}{tag} | {wm:.1f} ± {ws:.1f} | {am:.1f} ± {as_:.1f} "
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
    writer.writerow(["label", "method", "selector", "selector_reads_attributes", "test_wga_mean", "test_wga_std",
                     "test_avg_mean", "test_avg_std", "seeds", "attribute_labels_read", "settings"])
    for row in table:
        writer.writerow([row.label, row.method, row.selector, row.selector_reads_attributes, f"{row.wga[0]:.2f}",
                         f"{row.wga[1]:.2f}", f"{row.avg[0]:.2f}", f"{row.avg[1]:.2f}",
                         " ".join(map(str, row.seeds)), "; ".join(row.labels), json.dumps(row.settings)])
    return buffer.getvalue()


def as_json(table: Sequence[Row], unfinished: Sequence[dict[str, Any]]) -> str:
    data = {"rows": [{"label": r.label, **attrs.asdict(r), "test_wga_mean_std": r.wga, "test_avg_mean_std": r.avg}
                     for r in table],
            "unfinished": [{"path": t["path"], "record": t.get("record")} for t in unfinished]}
    return json.dumps(data, indent=2) + "\n"


def plot_wga(table: Sequence[Row], path: Path) -> None:
    """Test worst-group accuracy per row label (one bar per selector), mean with std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r.label for r in table))
    selectors = list(dict.fromkeys(r.selector for r in table))
    width = 0.8 / len(selectors)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(methods) * max(1, len(selectors)) ** 0.5 + 2), 4.2))
    for k, selector in enumerate(selectors):
        found = {r.label: r for r in table if r.selector == selector}
        xs = [i + (k - (len(selectors) - 1) / 2) * width for i, m in enumerate(methods) if m in found]
        stats = [found[m].wga for m in methods if m in found]
        bars = ax.bar(xs, [s[0] for s in stats], width=width, yerr=[s[1] for s in stats], capsize=3, label=selector)
        ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=2)
    ax.set_xticks(range(len(methods)), [m.replace(" (", "\n(") for m in methods], rotation=15)
    ax.set_ylabel("test worst-group accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Worst-group accuracy per method\n(mean ± std over seeds)")  # two lines: fits two bars
    ax.legend(title="settings chosen by", fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    atomic.write_figure(fig, path, dpi=120)


def write(out: Path, plugins: PluginManager, selectors: Sequence[str], fmt: str, rows_by: Sequence[str] = ()
          ) -> tuple[str, Path]:
    """Write report.md, report.csv, report.json and wga.png into the sweep directory; return the
    text in `fmt` and the figure's path."""
    if fmt not in FORMATS:
        raise ReportError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    table, unfinished = rows(out, plugins, selectors, rows_by)
    if not table:
        raise ReportError(f"{out}: no selector among {', '.join(selectors)} could score these runs")
    texts = {"md": markdown(table, unfinished), "csv": as_csv(table), "json": as_json(table, unfinished)}
    for ext, text in texts.items():
        atomic.write_text(Path(out) / f"report.{ext}", text)
    figure = Path(out) / "wga.png"
    plot_wga(table, figure)
    return texts[fmt], figure
