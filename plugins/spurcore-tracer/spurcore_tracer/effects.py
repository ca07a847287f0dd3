"""Effects: how much an intervention moves each group's accuracy, on train and on test.

Delta_acc(j) = acc(D_j, changed model) - acc(D_j, model), in percentage points. The signed
value says which way; the paper's Delta is its absolute value. Over R random repeats both are
averaged: `signed` is the mean signed change, `abs` the mean of the absolute changes.

Which groups are minority: within each class, the group with the most training examples is
the majority group of that class and every other group of that class is a minority group
(on waterdigits, like Waterbirds: the digit on its usual background is the majority).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch
from torch import nn

from spurcore.api import SpuriousData
from spurcore_tracer.replay import Replay


def group_accuracy(pred: np.ndarray, y: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Accuracy (percent) of each group; NaN for a group with no examples."""
    correct = np.asarray(pred) == np.asarray(y)
    counts = np.bincount(groups, minlength=n_groups)
    hits = np.bincount(groups, weights=correct.astype(np.float64), minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, 100.0 * hits / np.maximum(counts, 1), np.nan)


def minority_groups(data: SpuriousData, split: str = "train") -> list[int]:
    """Groups that are not the largest group of their class on `split`."""
    counts = np.bincount(data.groups(split), minlength=data.n_groups).reshape(data.n_classes, data.n_attrs)
    out = []
    for c in range(data.n_classes):
        if counts[c].sum() == 0:
            continue
        majority = int(np.argmax(counts[c]))
        out += [c * data.n_attrs + a for a in range(data.n_attrs) if a != majority and counts[c, a] > 0]
    return sorted(out)


class Evaluator:
    """Per-group accuracy of one model on the splits that carry attribute labels (train and
    test by default), evaluated through a `Replay` so that a change to a late layer does not
    recompute the early ones. `base` is the accuracy of the unchanged model. `marked`, a boolean
    mask over the training examples (the top-memorized ones), adds their accuracy on train as
    one more entry after the groups'."""

    def __init__(self, model: nn.Module, data: SpuriousData, splits: tuple[str, ...] = ("train", "test"),
                 batch_size: int = 512, max_cache_mb: float = 8192.0, marked: np.ndarray | None = None,
                 layers: Iterable[str] | None = None, cache_dir: str | None = None) -> None:
        self.model, self.data, self.marked = model, data, marked
        self.splits = tuple(s for s in splits if s in data.splits and data.splits[s].has_attributes)
        self.groups = {s: data.groups(s) for s in self.splits}
        self.counts = {s: np.bincount(self.groups[s], minlength=data.n_groups) for s in self.splits}
        self.replay = Replay(model, {s: data.splits[s] for s in self.splits}, batch_size, max_cache_mb,
                             layers, cache_dir)
        self.base_logits = self.replay.base
        self.base = {s: self._accuracy(s, self.base_logits[s]) for s in self.splits}
        self.evaluations = 0

    def _accuracy(self, split: str, logits: torch.Tensor) -> np.ndarray:
        pred, y = logits.argmax(1).numpy(), self.data.splits[split].y
        accuracy = group_accuracy(pred, y, self.groups[split], self.data.n_groups)
        if split == "train" and self.marked is not None:
            accuracy = np.append(accuracy, 100.0 * float((pred[self.marked] == y[self.marked]).mean()))
        return accuracy

    def accuracy(self, changed: Iterable[str]) -> dict[str, np.ndarray]:
        """Per-group accuracy of the model as it is now; `changed`: the module paths that differ
        from the recorded model (a superset is fine)."""
        self.evaluations += 1
        logits = self.replay.logits(changed)
        return {s: self._accuracy(s, logits[s]) for s in self.splits}

    def change(self, after: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Signed change in points, per split and group."""
        return {s: after[s] - self.base[s] for s in self.splits}


def summarize_changes(changes: list[dict[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    """Mean signed and mean absolute change over repeats: {split: {"signed", "abs"}}."""
    out = {}
    for split in changes[0]:
        stack = np.stack([c[split] for c in changes])
        out[split] = {"signed": stack.mean(0), "abs": np.abs(stack).mean(0)}
    return out
