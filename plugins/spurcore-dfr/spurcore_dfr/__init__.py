"""DFR: refit the last layer on frozen embeddings of a balanced held-out set.

The reference protocol (METHODS.md section 5): shuffle the validation set and halve it; for
each C, fit L1 logistic regression on a balanced subset of the second half and score it on
the first half (worst-group accuracy, or worst-class accuracy for the class-balanced variant);
then fit `retrains` times on fresh balanced subsets of the whole validation set with the best
C and average the coefficients and intercepts. Features are standardized with statistics of
the split being fitted (the paper says "standardize"; which statistics is left open), and the
standardization is folded into the returned linear head.
"""

from __future__ import annotations

from typing import Literal

import attrs
import numpy as np
from sklearn.linear_model import LogisticRegression

from spurcore import atomic, hookimpl
from spurcore.config import FieldError, positive
from spurcore.data import group_ids
from spurcore.model import linear_head
from spurcore.sampling import balanced_subset
from spurcore.specs import MitigationSpec

C_GRID = (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)


def _c_grid(instance, attribute, value) -> None:
    if not value or any(c <= 0 for c in value):
        raise FieldError(attribute.name, f"must be a non-empty list of positive numbers, got {value}")


@attrs.frozen(kw_only=True)
class DFROptions:
    c_grid: list[float] = attrs.field(factory=lambda: list(C_GRID), validator=_c_grid)
    retrains: int = attrs.field(default=20, validator=positive)
    fit_split: Literal["val", "train"] = "val"
    seed: int = 0


@attrs.frozen
class LinearFit:
    """A multinomial-or-one-vs-rest linear model on raw features: logits = x @ coef.T + intercept."""

    coef: np.ndarray
    intercept: np.ndarray

    def logits(self, x: np.ndarray) -> np.ndarray:
        return x @ self.coef.T + self.intercept


def fit_l1(x: np.ndarray, y: np.ndarray, c: float, n_classes: int) -> LinearFit:
    """L1 logistic regression on standardized x, returned on the raw feature scale.

    Binary problems give one row (the positive class); it becomes logits [0, z] so that the
    head always has one row per class.
    """
    mean, std = x.mean(0), x.std(0)
    std[std == 0] = 1.0
    model = LogisticRegression(l1_ratio=1.0, solver="liblinear", C=c, random_state=0)
    model.fit((x - mean) / std, y)
    coef = np.zeros((n_classes, x.shape[1]))
    intercept = np.zeros(n_classes)
    rows = model.coef_ / std
    if n_classes == 2:
        coef[1], intercept[1] = rows[0], model.intercept_[0] - rows[0] @ mean
    else:
        coef[model.classes_], intercept[model.classes_] = rows, model.intercept_ - rows @ mean
    return LinearFit(coef, intercept)


def worst_accuracy(fit: LinearFit, x: np.ndarray, y: np.ndarray, labels: np.ndarray) -> float:
    """The lowest accuracy over the values of `labels` (groups, or classes)."""
    correct = fit.logits(x).argmax(1) == y
    return min(correct[labels == v].mean() for v in np.unique(labels))


def tune_c(x, y, labels, c_grid, n_classes, rng) -> tuple[float, dict[float, float]]:
    """Halve the data at random; fit on a balanced subset of the second half, score on the
    first half. Returns the best C (ties: the first in the grid) and every score."""
    order = rng.permutation(len(y))
    held_out, fit_part = order[: len(y) // 2], order[len(y) // 2 :]
    subset = fit_part[balanced_subset(labels[fit_part], rng)]
    scores = {}
    for c in c_grid:
        fit = fit_l1(x[subset], y[subset], c, n_classes)
        scores[c] = float(worst_accuracy(fit, x[held_out], y[held_out], labels[held_out]))
    best = max(c_grid, key=lambda c: scores[c])
    return best, scores


def average_fits(x, y, labels, c, retrains, n_classes, rng) -> LinearFit:
    """Fit `retrains` times on fresh balanced subsets and average coefficients and intercepts."""
    fits = []
    for _ in range(retrains):
        subset = balanced_subset(labels, rng)
        fits.append(fit_l1(x[subset], y[subset], c, n_classes))
    return LinearFit(np.mean([f.coef for f in fits], 0), np.mean([f.intercept for f in fits], 0))


class DFR:
    """The stage object; `balance` is "group" (dfr) or "class" (dfr-class)."""

    def __init__(self, options: DFROptions, balance: str) -> None:
        self.options = options
        self.balance = balance

    def _labels(self, emb, n_attrs: int) -> np.ndarray:
        return group_ids(emb.y, emb.a, n_attrs) if self.balance == "group" else emb.y

    @hookimpl
    def spurcore_posthoc_head(self, run, stage, embeddings):
        data, options = run.data, self.options
        rng = np.random.default_rng(options.seed)
        val = embeddings["val"]
        val_labels = self._labels(val, data.n_attrs)
        if options.fit_split == "val":
            best, scores = tune_c(val.features, val.y, val_labels, options.c_grid, data.n_classes, rng)
            source, source_labels = val, val_labels
        else:  # DFR on train: fit on balanced training data, choose C on all of val
            source = embeddings["train"]
            source_labels = self._labels(source, data.n_attrs)
            scores = {}
            for c in options.c_grid:
                subset = balanced_subset(source_labels, rng)
                fit = fit_l1(source.features[subset], source.y[subset], c, data.n_classes)
                scores[c] = float(worst_accuracy(fit, val.features, val.y, val_labels))
            best = max(options.c_grid, key=lambda c: scores[c])
        final = average_fits(source.features, source.y, source_labels, best, options.retrains, data.n_classes, rng)
        atomic.write_json(run.out.stage_dir(stage.key) / "dfr.json", {
            "balance": self.balance, "fit_split": options.fit_split, "best_c": best,
            "tuning_scores": {str(c): s for c, s in scores.items()}, "retrains": options.retrains,
        })
        run.log(f"stage {stage.key}: DFR ({self.balance}-balanced) chose C={best}")
        return linear_head(final.coef, final.intercept)


def _needs(options: DFROptions) -> tuple[str, ...]:
    return tuple(dict.fromkeys(("val", options.fit_split)))


@hookimpl
def spurcore_register_mitigations():
    return [
        MitigationSpec(name="dfr", kind="posthoc", options=DFROptions, factory=lambda o: DFR(o, "group"),
                       needs_attributes=_needs, search_space={"retrains": [10, 20]},
                       description="Deep Feature Reweighting: group-balanced last-layer refit on val"),
        MitigationSpec(name="dfr-class", kind="posthoc", options=DFROptions, factory=lambda o: DFR(o, "class"),
                       search_space={"retrains": [10, 20]},
                       description="DFR balanced by class only (no attribute labels)"),
    ]
