"""DFR's protocol on cached embeddings (the package docstring describes it) and its stage
object, imported when a DFR stage runs."""

from __future__ import annotations

import re

import attrs
import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression

from spurcore import hookimpl
from spurcore.api import Embeddings, SplitEmbeddings, atomic, balanced_subset, group_ids, linear_head
from spurcore_dfr import DFROptions


def l1_penalty(version: str) -> dict[str, object]:
    """The keyword that makes scikit-learn `version` fit an L1 penalty. Before 1.8 only
    `penalty="l1"` does (`penalty` defaults to "l2" and `l1_ratio` is ignored outside
    "elasticnet", so `l1_ratio=1.0` alone silently fits L2); 1.8 deprecates `penalty` (gone in
    1.10) for `l1_ratio=1.0`. We keep supporting older versions because 1.8 needs Python 3.11."""
    major, minor = (int(part) for part in re.match(r"(\d+)\.(\d+)", version).groups())
    return {"l1_ratio": 1.0} if (major, minor) >= (1, 8) else {"penalty": "l1"}


L1_PENALTY = l1_penalty(sklearn.__version__)


CHUNK_BYTES = 2**25  # rows of features reduced at a time when standardizing


@attrs.frozen
class Standardizer:
    """Per-feature mean and std; a zero std reads as 1, as in scikit-learn's StandardScaler."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray) -> Standardizer:
        """The statistics of `x`, accumulated in float64 over chunks of rows: `x` may be the
        memory-mapped training features of a large dataset, which are never copied whole."""
        rows = max(1, CHUNK_BYTES // (8 * x.shape[1]))
        chunks = [slice(start, start + rows) for start in range(0, len(x), rows)]
        mean = sum(x[c].sum(0, dtype=np.float64) for c in chunks) / len(x)
        std = np.sqrt(sum(((x[c] - mean) ** 2).sum(0) for c in chunks) / len(x))
        std[std == 0] = 1.0
        return cls(mean, std)


@attrs.frozen
class LinearFit:
    """A multinomial-or-one-vs-rest linear model on raw features: logits = x @ coef.T + intercept."""

    coef: np.ndarray
    intercept: np.ndarray

    def logits(self, x: np.ndarray) -> np.ndarray:
        return x @ self.coef.T + self.intercept


@attrs.frozen
class Labelled:
    """Features, classes, and the labels that subsets are balanced over and fits scored by
    (group ids for `dfr`, the classes themselves for `dfr-class`)."""

    x: np.ndarray
    y: np.ndarray
    labels: np.ndarray

    def rows(self, index: np.ndarray) -> Labelled:
        return Labelled(self.x[index], self.y[index], self.labels[index])

    def balanced(self, rng: np.random.Generator) -> Labelled:
        return self.rows(balanced_subset(self.labels, rng))


def fit_l1(x: np.ndarray, y: np.ndarray, c: float, n_classes: int, scale: Standardizer | None = None) -> LinearFit:
    """L1 logistic regression on x standardized with `scale` (default: x's own statistics),
    returned on the raw feature scale.

    Binary problems give one row (the positive class); it becomes logits [0, z] so that the
    head always has one row per class.
    """
    if scale is None:
        scale = Standardizer.of(x)
    model = LogisticRegression(**L1_PENALTY, solver="liblinear", C=c, random_state=0)
    model.fit((x - scale.mean) / scale.std, y)
    coef = np.zeros((n_classes, x.shape[1]))
    intercept = np.zeros(n_classes)
    rows = model.coef_ / scale.std
    if n_classes == 2:
        coef[1], intercept[1] = rows[0], model.intercept_[0] - rows[0] @ scale.mean
    else:
        coef[model.classes_], intercept[model.classes_] = rows, model.intercept_ - rows @ scale.mean
    return LinearFit(coef, intercept)


def worst_accuracy(fit: LinearFit, data: Labelled) -> float:
    """The lowest accuracy over the values of `data.labels` (groups, or classes)."""
    correct = fit.logits(data.x).argmax(1) == data.y
    return float(min(correct[data.labels == v].mean() for v in np.unique(data.labels)))


def halve(data: Labelled, rng: np.random.Generator) -> tuple[Labelled, Labelled]:
    """Shuffle and split: (the first half, rounded down, to score on; the rest, to fit on)."""
    order = rng.permutation(len(data.y))
    return data.rows(order[: len(order) // 2]), data.rows(order[len(order) // 2 :])


@attrs.frozen
class Tuning:
    best: float
    scores: dict[float, float]
    fitted: int  # examples in the balanced subset every C was fitted on
    scored: int


def tune_c(fit_on: Labelled, score_on: Labelled, c_grid, n_classes, rng, scale: Standardizer | None = None) -> Tuning:
    """Fit every C on one balanced subset of `fit_on` and score it on `score_on`; the best C
    wins, ties going to the first in the grid (the reference's argmax)."""
    subset = fit_on.balanced(rng)
    scores = {c: worst_accuracy(fit_l1(subset.x, subset.y, c, n_classes, scale), score_on) for c in c_grid}
    return Tuning(max(c_grid, key=scores.__getitem__), scores, len(subset.y), len(score_on.y))


def average_fits(data: Labelled, c, retrains, n_classes, rng, scale: Standardizer | None = None) -> LinearFit:
    """Fit `retrains` times on fresh balanced subsets and average coefficients and intercepts."""
    fits = []
    for _ in range(retrains):
        subset = data.balanced(rng)
        fits.append(fit_l1(subset.x, subset.y, c, n_classes, scale))
    return LinearFit(np.mean([f.coef for f in fits], 0), np.mean([f.intercept for f in fits], 0))


def balanced_size(labels: np.ndarray) -> int:
    """How many examples a balanced subset of `labels` has."""
    counts = np.unique(labels, return_counts=True)[1]
    return int(len(counts) * counts.min())


def dfr_head(embeddings: Embeddings, options: DFROptions, balance: str, n_classes: int,
             n_attrs: int) -> tuple[LinearFit, dict]:
    """The whole protocol on cached embeddings: the head, and the record that says what was
    fitted on what (written to the stage's `dfr.json`)."""
    rng = np.random.default_rng(options.seed)

    def labelled(split: SplitEmbeddings) -> Labelled:
        labels = group_ids(split.y, split.a, n_attrs) if balance == "group" else split.y
        return Labelled(split.features, split.y, labels)

    train_scale = Standardizer.of(embeddings["train"].features) if options.standardize == "train" else None
    val = labelled(embeddings["val"])
    if options.fit_split == "val":
        scored, tuned_on = halve(val, rng)
        source, tuning_scale = val, None  # the reference tunes with the fitted subset's own statistics
    else:  # DFR on train: fit on balanced training data, choose C on all of val
        source = tuned_on = labelled(embeddings["train"])
        scored, tuning_scale = val, train_scale
    tuning = tune_c(tuned_on, scored, options.c_grid, n_classes, rng, tuning_scale)
    final = average_fits(source, tuning.best, options.retrains, n_classes, rng, train_scale)
    record = {
        "balance": balance, "fit_split": options.fit_split, "standardize": options.standardize,
        "best_c": tuning.best, "tuning_scores": {str(c): s for c, s in tuning.scores.items()},
        "tuning": {"fitted_on": options.fit_split, "fitted": tuning.fitted, "scored_on": "val", "scored": tuning.scored,
                   "standardized_with": _statistics(tuning_scale)},
        "final": {"fitted_on": options.fit_split, "fits": options.retrains,
                  "examples_per_fit": balanced_size(source.labels), "standardized_with": _statistics(train_scale)},
    }
    return final, record


def _statistics(scale: Standardizer | None) -> str:
    return "fitted subset" if scale is None else "train"


class DFR:
    """The stage object; `balance` is "group" (dfr) or "class" (dfr-class)."""

    def __init__(self, options: DFROptions, balance: str) -> None:
        self.options = options
        self.balance = balance

    @hookimpl
    def spurcore_posthoc_head(self, run, stage, embeddings):
        final, record = dfr_head(embeddings, self.options, self.balance, run.data.n_classes, run.data.n_attrs)
        atomic.write_json(run.out.stage_dir(stage.key) / "dfr.json", record)
        run.log(f"stage {stage.key}: DFR ({self.balance}-balanced) chose C={record['best_c']}")
        return linear_head(final.coef, final.intercept)
