"""Feldman's memorization estimate from models trained on random subsets (Feldman & Zhang 2020).

For training example i, `mem(i) = P[h(x_i) = y_i | h trained on i] - P[h(x_i) = y_i | h not
trained on i]`, each probability estimated by the share of the K models of that side that get i
right. With K models each trained on a random share p of the data, example i has on average
`p * K` models on one side and `(1 - p) * K` on the other; when one side has no model (at K = 8
and p = 0.7, about 6% of examples are in every subset), the estimate is undefined: NaN here,
counted as such in the summaries and left out of their means.
"""

from __future__ import annotations

import attrs
import numpy as np


@attrs.frozen(kw_only=True)
class Estimate:
    """Per-example arrays over one split's examples: `memorization` (NaN where undefined),
    `accuracy_in` / `accuracy_out` (share of the models that trained / did not train on the
    example that get it right; NaN without such a model), `models_in` / `models_out`."""

    memorization: np.ndarray
    accuracy_in: np.ndarray
    accuracy_out: np.ndarray
    models_in: np.ndarray
    models_out: np.ndarray

    @property
    def defined(self) -> np.ndarray:
        return ~np.isnan(self.memorization)

    @property
    def accuracies(self) -> dict[str, np.ndarray]:
        """The accuracy columns the summaries average per group."""
        return {"accuracy_in": self.accuracy_in, "accuracy_out": self.accuracy_out}


def _share(hits: np.ndarray, count: np.ndarray) -> np.ndarray:
    out = np.full(count.shape, np.nan)
    np.divide(hits, count, out=out, where=count > 0)
    return out


def memorization(correct: np.ndarray, trained: np.ndarray) -> Estimate:
    """The estimate from `correct` and `trained`, both boolean (models x examples): whether
    model k got example i right, and whether model k trained on example i."""
    correct, trained = np.asarray(correct, dtype=bool), np.asarray(trained, dtype=bool)
    if correct.ndim != 2 or correct.shape != trained.shape:
        raise ValueError(f"correct {correct.shape} and trained {trained.shape} must be the same (models x examples)")
    models_in, models_out = trained.sum(0), (~trained).sum(0)
    accuracy_in = _share((correct & trained).sum(0), models_in)
    accuracy_out = _share((correct & ~trained).sum(0), models_out)
    return Estimate(memorization=accuracy_in - accuracy_out, accuracy_in=accuracy_in, accuracy_out=accuracy_out,
                    models_in=models_in, models_out=models_out)
