"""Per-label counts and weights, shared by every baseline that balances or weights groups or
classes: the label of each training example ("group": class x attribute, which reads the
training split's attribute labels; "class": none), how many examples each label has, and the
weight of each label under the schemes of ReWeight, SqrtReWeight and the class-balanced loss.

Weights are normalised as SubpopBench normalises them: the labels present average 1, so a
weighted loss stays on the cross-entropy's scale; a label without examples weighs 0."""

from __future__ import annotations

import numpy as np

BY = ("group", "class")


def train_labels(data, by: str) -> tuple[np.ndarray, int]:
    """The label of every training example and how many labels there are: the group
    (`y * n_attrs + a`) for `by="group"`, the class for `by="class"` (no attribute read)."""
    if by == "group":
        return data.groups("train"), data.n_groups
    if by == "class":
        return np.asarray(data.splits["train"].y), data.n_classes
    raise ValueError(f"by must be one of {BY}, got {by!r}")


def label_counts(labels: np.ndarray, n_labels: int) -> np.ndarray:
    """How many examples carry each of `n_labels` labels (0 for an absent one)."""
    return np.bincount(np.asarray(labels), minlength=n_labels)


def normalised(weights: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """`weights` with the labels that have examples averaging 1 and the others at 0."""
    present = counts > 0
    out = np.where(present, weights, 0.0).astype(np.float64)
    return out * present.sum() / out.sum()


def inverse_frequency(counts: np.ndarray, power: float = 1.0) -> np.ndarray:
    """Each label's weight n^-power (ReWeight: power 1; SqrtReWeight: power 1/2), normalised."""
    counts = np.asarray(counts, dtype=np.float64)
    return normalised(np.maximum(counts, 1.0) ** -power, counts)


def effective_number(counts: np.ndarray, beta: float) -> np.ndarray:
    """Each label's weight (1 - beta) / (1 - beta^n), the inverse of its effective number of
    examples (Cui et al., CVPR 2019), normalised. beta -> 0 is no weighting; beta -> 1 is
    inverse frequency."""
    counts = np.asarray(counts, dtype=np.float64)
    return normalised((1.0 - beta) / (1.0 - beta ** np.maximum(counts, 1.0)), counts)


class TrainLabels:
    """What a stage that balances or weights by label keeps: every training example's label
    (on the CPU) and each label's count, read when the stage starts."""

    by: str
    labels: np.ndarray
    counts: np.ndarray

    def read_labels(self, data) -> None:
        labels, n_labels = train_labels(data, self.by)
        self.labels = np.array(labels, dtype=np.int64)  # a writable copy
        self.counts = label_counts(self.labels, n_labels)
