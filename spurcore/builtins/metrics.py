"""The standard metrics. "Average accuracy" is the plain accuracy over every example of the
split (not the mean of group accuracies); worst-group accuracy is the lowest accuracy over the
groups present in the split; worst-class accuracy is the lowest per-class recall and needs no
attribute labels."""

from __future__ import annotations

from typing import TYPE_CHECKING

from spurcore.hookspecs import hookimpl
from spurcore.specs import MetricSpec

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from spurcore.evaluation import Predictions


def _accuracy_by(labels: np.ndarray, correct: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np  # on use: listing plugins imports no numpy

    counts = np.bincount(labels, minlength=n)
    hits = np.bincount(labels, weights=correct.astype(np.float64), minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return hits / counts, counts


def avg_acc(p: Predictions) -> dict[str, float]:
    return {"avg_acc": float(p.correct.mean())}


def worst_group_acc(p: Predictions) -> dict[str, float]:
    acc, counts = _accuracy_by(p.groups, p.correct, len(p.group_names))
    return {"worst_group_acc": float(acc[counts > 0].min())}


def worst_class_acc(p: Predictions) -> dict[str, float]:
    acc, counts = _accuracy_by(p.y, p.correct, p.n_classes)
    return {"worst_class_acc": float(acc[counts > 0].min())}


def group_acc(p: Predictions) -> dict[str, dict]:
    """Accuracy and count of every group; a group with no examples has accuracy None."""
    acc, counts = _accuracy_by(p.groups, p.correct, len(p.group_names))
    return {
        "group_acc": {n: (float(a) if c else None) for n, a, c in zip(p.group_names, acc, counts)},
        "group_count": {n: int(c) for n, c in zip(p.group_names, counts)},
    }


@hookimpl
def spurcore_register_metrics():
    return [
        MetricSpec(name="avg_acc", compute=avg_acc, description="accuracy over all examples of the split"),
        MetricSpec(name="worst_group_acc", compute=worst_group_acc, needs_attributes=True,
                   description="lowest accuracy over the groups present"),
        MetricSpec(name="worst_class_acc", compute=worst_class_acc, description="lowest per-class recall"),
        MetricSpec(name="group_acc", compute=group_acc, needs_attributes=True,
                   description="accuracy and count of every group"),
    ]
