"""DFR: refit the last layer on frozen embeddings of a balanced held-out set.

The authors' protocol (docs/methods/dfr.md; `dfr_on_validation_tune` and
`dfr_on_validation_eval` in their `dfr_evaluate_spurious.py`): shuffle the validation set and
halve it; for each C, fit L1 logistic regression on a balanced subset of the second half and
score it on the first half (worst-group accuracy, or worst-class accuracy for the
class-balanced variant); then fit `retrains` times on fresh balanced subsets of the whole
validation set with the best C and average the coefficients and intercepts. Features are
standardized as the reference code does by default (`standardize`), and the standardization is
folded into the returned linear head. docs/methods/dfr.md lists what still differs from the
reference code, and why.
"""

from __future__ import annotations

from typing import Literal

import attrs

from spurcore import hookimpl
from spurcore.api import FieldError, MitigationSpec, lazy, lazy_exports, positive

__all__ = [
    "DFR", "DFROptions", "L1_PENALTY", "Labelled", "LinearFit", "Standardizer", "Tuning", "average_fits",
    "balanced_size", "dfr_head", "fit_l1", "halve", "l1_penalty", "tune_c", "worst_accuracy",
]
__getattr__, __dir__ = lazy_exports(__name__, {
    name: f"spurcore_dfr.stage:{name}" for name in __all__ if name != "DFROptions"})

C_GRID = (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)


def _c_grid(instance, attribute, value) -> None:
    if not value or any(c <= 0 for c in value):
        raise FieldError(attribute.name, f"must be a non-empty list of positive numbers, got {value}")


@attrs.frozen(kw_only=True)
class DFROptions:
    """`standardize`: "train" standardizes the final fits (and, with `fit_split = "train"`, the
    tuning fits) with the mean and std of the whole training split's embeddings, while the
    tuning fits on val use their own subset's, exactly as the reference code does; "subset"
    standardizes every fit with its own subset's statistics (this plugin's behaviour before;
    the paper only says "standardize")."""

    c_grid: list[float] = attrs.field(factory=lambda: list(C_GRID), validator=_c_grid)
    retrains: int = attrs.field(default=20, validator=positive)
    fit_split: Literal["val", "train"] = "val"
    standardize: Literal["train", "subset"] = "train"
    seed: int = 0


def _needs(options: DFROptions) -> tuple[str, ...]:
    return tuple(dict.fromkeys(("val", options.fit_split)))


@hookimpl
def spurcore_register_mitigations():
    return [
        MitigationSpec(name="dfr", kind="posthoc", options=DFROptions,
                       factory=lazy("spurcore_dfr.stage:DFR", balance="group"), needs_attributes=_needs, search_space={"retrains": [10, 20]},
                       description="Deep Feature Reweighting: group-balanced last-layer refit on val"),
        MitigationSpec(name="dfr-class", kind="posthoc", options=DFROptions,
                       factory=lazy("spurcore_dfr.stage:DFR", balance="class"), search_space={"retrains": [10, 20]},
                       description="DFR balanced by class only (no attribute labels)"),
    ]
