"""Evaluation: one pass over a split, predictions gathered, metrics computed from specs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np
import torch

from spurcore.data import group_ids, iterate_batches

if TYPE_CHECKING:  # pragma: no cover
    from spurcore.context import RunContext, StageContext
    from spurcore.data import SplitData
    from spurcore.device import Device
    from spurcore.specs import MetricSpec


@attrs.frozen(kw_only=True)
class Predictions:
    """What metrics are computed from: true classes, predicted classes, attributes (or None)."""

    y: np.ndarray
    pred: np.ndarray
    a: np.ndarray | None
    class_names: tuple[str, ...]
    attr_names: tuple[str, ...]

    def __attrs_post_init__(self) -> None:
        if len(self.y) != len(self.pred) or (self.a is not None and len(self.a) != len(self.y)):
            raise ValueError("y, pred and a must have the same length")

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def correct(self) -> np.ndarray:
        return self.pred == self.y

    @property
    def groups(self) -> np.ndarray | None:
        return None if self.a is None else group_ids(self.y, self.a, len(self.attr_names))

    @property
    def group_names(self) -> tuple[str, ...]:
        return tuple(f"{c}/{a}" for c in self.class_names for a in self.attr_names)


def compute_metrics(predictions: Predictions, metrics: Sequence[MetricSpec]) -> dict[str, Any]:
    """Merge every metric's output; metrics needing attributes are skipped when there are none."""
    out: dict[str, Any] = {}
    for spec in metrics:
        if spec.needs_attributes and predictions.a is None:
            continue
        out.update(spec.compute(predictions))
    return out


@torch.no_grad()
def evaluate(run: RunContext, stage: StageContext, epoch: int, split: str) -> dict[str, Any]:
    """Forward one split in eval mode, calling the evaluation hooks, and return its metrics."""
    model, device, hook = stage.model, run.device, run.plugins.hook
    data = run.data.splits[split]
    model.eval()
    hook.spurcore_evaluation_start(run=run, stage=stage, epoch=epoch, split=split)
    preds = []
    batches = iterate_batches(
        data, torch.arange(len(data)), stage.train.eval_batch_size,
        num_workers=stage.train.num_workers, pin_memory=device.pin_memory,
    )
    for batch in batches:
        batch = device.move(batch)
        with device.autocast():
            logits = model(batch.x, index=batch.index)
        preds.append(logits.argmax(1))
        hook.spurcore_evaluation_batch(run=run, stage=stage, epoch=epoch, split=split, batch=batch, logits=logits)
    predictions = Predictions(
        y=data.y, pred=torch.cat(preds).cpu().numpy(), a=data.a,
        class_names=run.data.class_names, attr_names=run.data.attr_names,
    )
    metrics = compute_metrics(predictions, run_metrics(run))
    hook.spurcore_evaluation_end(run=run, stage=stage, epoch=epoch, split=split, metrics=metrics)
    return metrics


@torch.no_grad()
def predict(model: torch.nn.Module, split: SplitData, device: Device, batch_size: int = 512) -> np.ndarray:
    """Logits (examples x classes, float32, row i = example i) of one split, the model in eval
    mode, no hooks called; the model's train/eval mode is restored after. For methods that read
    an earlier model's predictions on the training set (JTT's error set)."""
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for batch in iterate_batches(split, torch.arange(len(split)), batch_size, pin_memory=device.pin_memory):
            batch = device.move(batch)
            with device.autocast():
                chunks.append(model(batch.x, index=batch.index).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(chunks).numpy()


def run_metrics(run: RunContext) -> list[MetricSpec]:
    return [run.plugins.get("metrics", name) for name in run.config.metrics]


def evaluation_splits(run: RunContext) -> list[str]:
    """Every split but train: val, test, then any extra evaluation splits."""
    return [s for s in run.data.splits if s != "train"]
