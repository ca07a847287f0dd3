"""What a tracker logs of a run, computed from the run directory's own records.

Everything is derived from files the runner has written (`metrics.jsonl`, each stage's
`result.json`, `summary.json`), never from what a hook happened to see, so a resumed run, or
one killed between a checkpoint and its log, is logged completely by logging whatever the
tracker does not have yet. A tracker sees three kinds of entry, each at one step:

* an epoch (`kind="epoch"`): `train_loss`, every evaluated split's metrics, one scalar per
  group (`test/group_acc/waterbird_land`), `stage` (its index), then `epoch` (the stage's own);
* a finished stage (`kind="stage"`): `selected_epoch`, at the stage's last step;
* the finished run (`kind="final"`): the summary's metrics as `final/<split>/<metric>`, then
  `final/selected_epoch`, at the last step.

Steps count epochs across the stages of the pipeline: a train stage takes its `epochs`
steps, a post-hoc stage one, so two runs of one pipeline put the same epoch at the same step.
The last key of an entry is its marker: an entry whose marker the tracker holds at that step
was logged whole (trackers write an entry in one batch, marker last).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from spurcore.api import to_dict

EPOCH_MARKER = "epoch"
STAGE_MARKER = "selected_epoch"
FINAL_MARKER = "final/selected_epoch"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


def scalar_name(part: str) -> str:
    """One part of a scalar's name: a group name `waterbird/land` becomes `waterbird_land`
    (a slash would nest it one level deeper), spaces and other characters trackers refuse `_`."""
    return _UNSAFE.sub("_", str(part)).strip("_") or "_"


def flatten_metrics(prefix: str, metrics: Mapping[str, Any]) -> dict[str, float]:
    """`{split}/{metric}` for every number, `{split}/{metric}/{key}` for every number of a
    mapping (group accuracies and counts, by group name); None (an empty group) is left out."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}/{scalar_name(key)}"
        if isinstance(value, Mapping):
            out.update(flatten_metrics(name, value))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


def hyperparameters(config: Any) -> dict[str, str | int | float | bool]:
    """The resolved pipeline as flat `key.sub.key` hyperparameters: lists of tables by index
    (`stages.0.method`), other lists and None as JSON text."""
    flat: dict[str, str | int | float | bool] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            for i, item in enumerate(value):
                walk(f"{prefix}.{i}", item)
        elif isinstance(value, (str, int, float, bool)):
            flat[prefix] = value
        else:
            flat[prefix] = json.dumps(value)

    walk("", to_dict(config))
    return flat


@attrs.frozen
class Entry:
    """What one step adds: `scalars` in the order a tracker writes them, the marker last."""

    kind: str
    step: int
    scalars: dict[str, float]

    @property
    def marker(self) -> str:
        return next(reversed(self.scalars))


@attrs.frozen
class Layout:
    """Where each stage's epochs sit on the step axis: stage key -> (first step - 1, kind, epochs)."""

    stages: dict[str, tuple[int, str, int]]

    @classmethod
    def of(cls, run: Any) -> Layout:
        stages, offset = {}, 0
        for planned in run.plan.stages:
            steps = planned.train.epochs if planned.spec.kind == "train" else 1
            stages[planned.key] = (offset, planned.spec.kind, steps)
            offset += steps
        return cls(stages)

    def step(self, stage: str, epoch: int) -> int:
        """The step of one epoch of a stage (a post-hoc stage's epoch 0 is its one step)."""
        offset, kind, _ = self.stages[stage]
        return offset + (epoch if kind == "train" else 1)

    def last_step(self, stage: str) -> int:
        offset, _, steps = self.stages[stage]
        return offset + steps


def entries(run: Any, layout: Layout) -> list[Entry]:
    """Every entry the run's records hold so far, in step order (epochs, then a stage's end,
    then the run's end)."""
    out = run.out
    found: list[Entry] = []
    rows: dict[tuple[str, int], list[dict[str, Any]]] = {}
    if out.metrics.exists():
        for line in out.metrics.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows.setdefault((row["stage"], row["epoch"]), []).append(row)
    for (stage, epoch), split_rows in rows.items():
        if stage not in layout.stages:
            continue
        scalars: dict[str, float] = {}
        loss = split_rows[0].get("train_loss")
        if loss is not None:
            scalars["train_loss"] = float(loss)
        for row in split_rows:
            metrics = {k: v for k, v in row.items() if k not in ("stage", "epoch", "split", "train_loss")}
            scalars.update(flatten_metrics(scalar_name(row["split"]), metrics))
        scalars["stage"] = float(list(layout.stages).index(stage))
        scalars[EPOCH_MARKER] = float(epoch)
        found.append(Entry("epoch", layout.step(stage, epoch), scalars))
    for stage in layout.stages:
        result = out.stage_result(stage)
        if result is not None:
            found.append(Entry("stage", layout.last_step(stage), {STAGE_MARKER: float(result["selected"]["epoch"])}))
    if out.summary.exists():
        summary = out.read_summary()
        scalars = {}
        for split, metrics in summary["metrics"].items():
            scalars.update(flatten_metrics(f"final/{scalar_name(split)}", metrics))
        scalars[FINAL_MARKER] = float(summary["selected"]["epoch"])
        found.append(Entry("final", max((layout.last_step(s) for s in layout.stages), default=1), scalars))
    order = {"epoch": 0, "stage": 1, "final": 2}
    return sorted(found, key=lambda e: (e.step, order[e.kind]))


def artifacts(run: Any) -> list[Path]:
    """What a finished run hands a tracker: its figures (`*.png` at the top of the run
    directory), `summary.json`, `report.md` and `config.toml`."""
    out = run.out
    files = sorted(out.path.glob("*.png")) + [out.summary, out.report, out.config]
    return [path for path in files if path.is_file()]
