"""Balancing by label, shared by every method that balances groups or classes (DFR's balanced
subsets, NeuronTune's class-balanced sampling, group-balanced training)."""

from __future__ import annotations

import numpy as np


def balanced_subset(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of a subset in which every label present appears equally often: each label's
    examples are shuffled and cut to the count of the rarest label. Sorted."""
    labels = np.asarray(labels)
    values = np.unique(labels)
    per_label = [np.flatnonzero(labels == v) for v in values]
    keep = min(len(ix) for ix in per_label)
    return np.sort(np.concatenate([rng.permutation(ix)[:keep] for ix in per_label]))


def balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Per-example sampling weights that give every label present the same total weight."""
    labels = np.asarray(labels)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return 1.0 / (len(counts) * counts[inverse])
