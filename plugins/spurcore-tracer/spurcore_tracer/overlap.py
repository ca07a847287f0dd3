"""Rank overlap (the paper's Figure 3): do the two criteria point at the same neurons?

For the top p% of neurons by gradient (p = 0.01 in the paper, at least one neuron), the
percentile ranks of their magnitudes among all neurons; and conversely, for the top p% by
magnitude, the percentile ranks of their gradients (0: smallest, 100: largest). With a
per-group gradient, each group's ranking counts separately and the ranks are pooled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from spurcore_tracer.selection import percentile_ranks, top_percent

BINS = np.linspace(0, 100, 21)


def rank_overlap(magnitude: np.ndarray, gradients: Mapping[str, np.ndarray], percents: Sequence[float]) -> list[dict]:
    """For each p: ranks of top-gradient neurons by magnitude, and of top-magnitude neurons by
    gradient, pooled over the gradient vectors given ({name: scores})."""
    mag_ranks = percentile_ranks(magnitude)
    out = []
    for p in percents:
        by_gradient, by_magnitude = [], []
        top_mag = top_percent(magnitude, p)
        for scores in gradients.values():
            by_gradient += mag_ranks[top_percent(scores, p)].tolist()
            by_magnitude += percentile_ranks(scores)[top_mag].tolist()
        out.append({
            "percent": p,
            "count": len(top_mag),
            "top_gradient_magnitude_ranks": by_gradient,
            "top_magnitude_gradient_ranks": by_magnitude,
            "bins": BINS.tolist(),
            "top_gradient_hist": np.histogram(by_gradient, BINS)[0].tolist(),
            "top_magnitude_hist": np.histogram(by_magnitude, BINS)[0].tolist(),
        })
    return out
