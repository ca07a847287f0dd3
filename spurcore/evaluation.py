"""Evaluation: one pass over a split (for train, over the examples `[train] train_eval` names),
predictions gathered, metrics computed from specs; `Evaluator` runs a stage's evaluations and
announces them to the run's hooks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np
import torch

from spurcore import config as cfg
from spurcore.data import group_ids, iterate_batches
from spurcore.rng import kept_rng_state
from spurcore.sampling import capped_subset

if TYPE_CHECKING:  # pragma: no cover
    from spurcore.context import RunContext, StageContext
    from spurcore.data import SplitData, SpuriousData
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


class Evaluator:
    """The evaluations of one run's stages, announced through `hook` (the run's hook relay):
    after every epoch of a train stage, and once for a post-hoc stage."""

    def __init__(self, run: RunContext, hook: Any) -> None:
        self.run, self.hook = run, hook
        self._train: dict[str, TrainEvaluation | None] = {}

    def train_examples(self, stage: StageContext) -> TrainEvaluation | None:
        """The training examples this stage evaluates, drawn once per setting (same seed)."""
        setting = stage.train.train_eval
        if setting not in self._train:
            self._train[setting] = train_evaluation(setting, self.run.data, self.run.config.seed)
        return self._train[setting]

    def every_split(self, stage: StageContext, epoch: int) -> dict[str, dict[str, Any]]:
        """Metrics per split: train first (per `train_eval`), then val, test and any extra split.
        The train pass leaves every RNG as it found it (a DataLoader draws its base seed), so
        training is the same whatever `train_eval` says."""
        metrics = {}
        train = self.train_examples(stage)
        if train is not None:
            with kept_rng_state():
                metrics["train"] = self.split(stage, epoch, "train", train.positions)
        for split in evaluation_splits(self.run):
            metrics[split] = self.split(stage, epoch, split)
        return metrics

    def every_variant(self, stage: StageContext, epoch: int) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
        """`every_split` once per inference variant of the stage (`stage.variants`): the first
        variant's metrics and {variant: metrics}, the model left in the first variant; or
        `every_split` and None for a stage without variants."""
        if not stage.variants:
            return self.every_split(stage, epoch), None
        by_variant = {}
        for name in stage.variants:
            stage.use_variant(name)
            by_variant[name] = self.every_split(stage, epoch)
        stage.use_variant(next(iter(stage.variants)))
        return next(iter(by_variant.values())), by_variant

    @torch.no_grad()
    def split(self, stage: StageContext, epoch: int, split: str, positions: np.ndarray | None = None) -> dict[str, Any]:
        """Forward one split in eval mode, calling the evaluation hooks, and return its metrics:
        on every example, or on the examples at `positions` only (batches carry their real
        indices in `batch.index`; metrics are computed on those examples' labels)."""
        run, hook = self.run, self.hook
        model, device = stage.model, run.device
        data = run.data.splits[split]
        order = np.arange(len(data)) if positions is None else np.asarray(positions, dtype=np.int64)
        model.eval()
        hook.spurcore_evaluation_start(run=run, stage=stage, epoch=epoch, split=split)
        preds = []
        batches = iterate_batches(
            data, torch.from_numpy(order), stage.train.eval_batch_size,
            **device.loader_options(stage.train.num_workers),
        )
        for batch in batches:
            batch = device.move(batch, channels_last=stage.train.channels_last)
            with device.autocast():
                logits = model(batch.x, index=batch.index)
            preds.append(logits.argmax(1))
            hook.spurcore_evaluation_batch(run=run, stage=stage, epoch=epoch, split=split, batch=batch, logits=logits)
        predictions = Predictions(
            y=data.y[order], pred=torch.cat(preds).cpu().numpy(), a=None if data.a is None else data.a[order],
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
        for batch in iterate_batches(split, torch.arange(len(split)), batch_size, **device.loader_options(0)):
            batch = device.move(batch)
            with device.autocast():
                chunks.append(model(batch.x, index=batch.index).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(chunks).numpy()


def run_metrics(run: RunContext) -> list[MetricSpec]:
    return [run.plugins.get("metrics", name) for name in run.config.metrics]


def evaluation_splits(run: RunContext) -> list[str]:
    """Every split but train: val, test, then any extra evaluation splits. (Train is evaluated
    first, on the examples `train_evaluation` names.)"""
    return [s for s in run.data.splits if s != "train"]


AUTO_SUBSET = 2000


@attrs.frozen(kw_only=True)
class TrainEvaluation:
    """Which training examples are evaluated after every epoch: `rule` is "full" or
    "subset:N"; `positions` the sorted example positions (None: every example)."""

    rule: str
    positions: np.ndarray | None
    total: int

    @property
    def examples(self) -> int:
        return self.total if self.positions is None else len(self.positions)

    def record(self) -> dict[str, Any]:
        """What a stage's result says about it: {"rule", "examples", "of"}."""
        return {"rule": self.rule, "examples": self.examples, "of": self.total}


def train_evaluation(setting: str, data: SpuriousData, seed: int) -> TrainEvaluation | None:
    """Resolve `[train] train_eval` on this data; None for "none".

    "auto" is "full" when the training split is held in memory (one forward pass, a fraction
    of an epoch) and "subset:2000" when it is dataset-backed (decoding it costs about an
    epoch). "subset:N" keeps up to N examples of every group (every example of a smaller
    group), or of every class when the split has no attribute labels, drawn by
    `capped_subset` from `numpy.random.default_rng(seed)`: the same examples in every epoch,
    every stage and on resume, and nested for growing N.
    """
    rule, cap = cfg.parse_train_eval(setting)
    split = data.splits["train"]
    if rule == "none":
        return None
    if rule == "auto":
        rule, cap = ("full", None) if split.in_memory else ("subset", AUTO_SUBSET)
    if rule == "full":
        return TrainEvaluation(rule="full", positions=None, total=len(split))
    labels = split.y if split.a is None else data.groups("train")
    positions = capped_subset(labels, cap, np.random.default_rng(seed % 2**63))
    return TrainEvaluation(rule=f"subset:{cap}", positions=positions, total=len(split))
