"""The one-run memorization estimates: per-example scores from a single training run's
per-epoch record (`dynamics.Dynamics`), each oriented so that a higher score means more
memorized, as Feldman's is.

* learning time: the epoch from which the example stays correctly classified (1 when it is
  right at every recorded epoch; E + 1, one past the last epoch, when it is wrong at the last);
* cumulative loss: the sum over the epochs of the example's cross-entropy;
* forgetting: Toneva et al. (ICLR 2019), the number of right-to-wrong transitions between
  consecutive epochs; an example never right counts E, more than any example that was learned
  can reach (at most E // 2), as the paper ranks unlearned examples most forgettable;
* curvature: Garg, Ravikumar & Roy (2023), the input-loss curvature `Tr(H^2)` averaged over the
  epochs it was measured at (`curvature.input_curvature`).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import numpy as np

FELDMAN_ZHANG = "feldman-zhang"
ONE_RUN = "one-run"  # every one-run estimator, from the same runs


def learning_time(correct: np.ndarray) -> np.ndarray:
    """`correct`: epochs x examples, boolean. One plus the last epoch (1-based) an example is wrong at."""
    correct = _epochs_by_examples(correct, bool)
    epochs = correct.shape[0]
    wrong = ~correct
    last_wrong = np.where(wrong.any(0), epochs - np.argmax(wrong[::-1], axis=0), 0)
    return (last_wrong + 1).astype(float)


def cumulative_loss(loss: np.ndarray) -> np.ndarray:
    """`loss`: epochs x examples. The sum over the epochs."""
    return _epochs_by_examples(loss, float).sum(0)


def forgetting(correct: np.ndarray) -> np.ndarray:
    """`correct`: epochs x examples. Right-to-wrong transitions; E for an example never right."""
    correct = _epochs_by_examples(correct, bool)
    events = (correct[:-1] & ~correct[1:]).sum(0).astype(float)
    return np.where(correct.any(0), events, float(correct.shape[0]))


def mean_curvature(curvature: np.ndarray) -> np.ndarray:
    """`curvature`: measured epochs x examples. The mean over the epochs."""
    return _epochs_by_examples(curvature, float).mean(0)


def _epochs_by_examples(values: np.ndarray, dtype: type) -> np.ndarray:
    values = np.asarray(values, dtype=dtype)
    if values.ndim != 2 or values.shape[0] == 0:
        raise ValueError(f"expected an epochs x examples table with at least one epoch, got shape {values.shape}")
    return values


@attrs.frozen(kw_only=True)
class Estimator:
    """A one-run estimator: what it reads from the record (`reads`: "correct", "loss" or
    "curvature"), how it scores, what its score is (`label`, for figures and docs), its paper."""

    name: str
    reads: str
    score: Callable[[np.ndarray], np.ndarray]
    label: str
    paper: str


ESTIMATORS: dict[str, Estimator] = {e.name: e for e in (
    Estimator(name="learning-time", reads="correct", score=learning_time,
              label="learning time (epoch from which the example stays right)",
              paper="a learning-speed proxy of Jiang et al., Characterizing Structural Regularities of Labeled Data "
                    "in Overparameterized Models (ICML 2021)"),
    Estimator(name="cumulative-loss", reads="loss", score=cumulative_loss,
              label="cumulative training loss (sum over the epochs)",
              paper="a learning-speed proxy of Jiang et al. (ICML 2021), as above"),
    Estimator(name="forgetting", reads="correct", score=forgetting,
              label="forgetting events (right-to-wrong transitions)",
              paper="Toneva et al., An Empirical Study of Example Forgetting (ICLR 2019)"),
    Estimator(name="curvature", reads="curvature", score=mean_curvature,
              label="input-loss curvature Tr(H^2), mean over the measured epochs",
              paper="Garg, Ravikumar & Roy, Memorization Through the Lens of Curvature of Loss Function "
                    "Around Samples (arXiv 2307.05831, 2023)"),
)}
NAMES = (FELDMAN_ZHANG, *ESTIMATORS)
