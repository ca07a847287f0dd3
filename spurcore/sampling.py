"""Balancing by label, shared by every method that balances groups or classes (DFR's balanced
subsets, NeuronTune's class-balanced sampling, group-balanced training) and by the runner's
per-group subset of the training split it evaluates (`train_eval = "subset:N"`).

Subsets are drawn from either a numpy generator or the `torch.Generator` that
`spurcore_train_sampler` hands out (seeded by seed, stage and epoch, so a resumed run draws the
same subsets); both give numpy index arrays."""

from __future__ import annotations

import numpy as np
import torch

Generator = np.random.Generator | torch.Generator


def _permutation(indices: np.ndarray, rng: Generator) -> np.ndarray:
    if isinstance(rng, torch.Generator):
        return indices[torch.randperm(len(indices), generator=rng).numpy()]
    return rng.permutation(indices)


def balanced_subset(labels: np.ndarray, rng: Generator) -> np.ndarray:
    """Indices of a subset in which every label present appears equally often: each label's
    examples are shuffled and cut to the count of the rarest label. Sorted."""
    return capped_subset(labels, int(np.unique(labels, return_counts=True)[1].min()), rng)


def capped_subset(labels: np.ndarray, cap: int, rng: Generator) -> np.ndarray:
    """Indices of up to `cap` examples of every label present (every example of a rarer one):
    each label's examples, in increasing label order, are shuffled by `rng` and cut to `cap`.
    Sorted. The same `rng` state gives nested subsets for growing caps."""
    labels = np.asarray(labels)
    per_label = [np.flatnonzero(labels == v) for v in np.unique(labels)]
    return np.sort(np.concatenate([_permutation(ix, rng)[:cap] for ix in per_label]))


def stratified_split(labels: np.ndarray, fraction: float, rng: Generator) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out): `round(fraction * n)` of each label's n examples held out (at least one
    of a label with two or more, never all of one), drawn by `rng`. Both sorted."""
    labels = np.asarray(labels)
    held = []
    for value in np.unique(labels):
        ix = _permutation(np.flatnonzero(labels == value), rng)
        take = min(max(round(fraction * len(ix)), 1 if len(ix) > 1 else 0), len(ix) - 1)
        held.append(ix[:take])
    out = np.sort(np.concatenate(held))
    return np.setdiff1d(np.arange(len(labels)), out), out


def balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Per-example sampling weights that give every label present the same total weight."""
    labels = np.asarray(labels)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return 1.0 / (len(counts) * counts[inverse])
