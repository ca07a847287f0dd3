"""Selection: which neurons a criterion singles out.

Every selection is a prefix of one ranking: neurons ordered by (score descending, global
index ascending), the global index being (module order, unit index). So top-k returns exactly
k distinct neurons, top-k is contained in top-(k+1), and ties are broken the same way every
time. NaN scores are refused.
"""

from __future__ import annotations

import math

import numpy as np

from spurcore_tracer.neurons import NeuronIndex


def _scores(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores must be a vector, got shape {scores.shape}")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    return scores


def ranking(scores: np.ndarray) -> np.ndarray:
    """Global indices ordered by (score descending, index ascending)."""
    scores = _scores(scores)
    return np.lexsort((np.arange(len(scores)), -scores))


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """The k highest-scoring neurons (global indices, in rank order)."""
    scores = _scores(scores)
    if not 0 <= k <= len(scores):
        raise ValueError(f"k must be in 0..{len(scores)}, got {k}")
    return ranking(scores)[:k]


def count_for_percent(total: int, percent: float) -> int:
    """How many neurons "top p%" means: ceil(p/100 * total), at least 1."""
    if not 0 < percent <= 100:
        raise ValueError(f"percent must be in (0, 100], got {percent}")
    return max(1, math.ceil(percent / 100 * total - 1e-9))


def top_percent(scores: np.ndarray, percent: float) -> np.ndarray:
    """The top `percent`% of neurons (at least one)."""
    return top_k(scores, count_for_percent(len(scores), percent))


def top_k_per_layer(scores: np.ndarray, index: NeuronIndex, k: int) -> dict[str, np.ndarray]:
    """{layer path: its top-min(k, units) neurons by global index}, ranked within the layer."""
    scores = _scores(scores)
    if len(scores) != index.total:
        raise ValueError(f"{len(scores)} scores for {index.total} neurons")
    out = {}
    for layer in index.layers:
        local = top_k(scores[layer.span], min(k, layer.units))
        out[layer.path] = local + layer.offset
    return out


def percentile_ranks(scores: np.ndarray) -> np.ndarray:
    """Each neuron's rank among all, as a percentage: 0 the smallest, 100 the largest
    (tied scores share their mean rank)."""
    scores = _scores(scores)
    n = len(scores)
    if n == 1:
        return np.full(1, 100.0)
    order = np.sort(scores)
    less = np.searchsorted(order, scores, side="left")
    equal = np.searchsorted(order, scores, side="right") - less
    return 100.0 * (less + (equal - 1) / 2) / (n - 1)


def non_critical(scores: np.ndarray, exclude_percent: float) -> np.ndarray:
    """The neurons outside the top `exclude_percent`% of a ranking: the control's pool."""
    order = ranking(scores)
    return np.sort(order[count_for_percent(len(order), exclude_percent):])
