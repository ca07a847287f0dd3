"""Just Train Twice (Liu et al., ICML 2021), as a spurcore mitigation.

JTT needs no attribute labels to train: an identification model trained by ERM for a few
epochs gets the minority examples wrong; the final model is trained by ERM on a training set
in which every one of those errors appears 1 + `upweight` times.

In a pipeline the identification model is the stage before this one (an ERM stage of T
epochs, or the model of `[init]`); this stage collects its training-set errors when it starts,
then trains a fresh model (`restart = "initial"`, the paper's choice: the model the pipeline
started from) or keeps training the identification model (`restart = "continue"`).

Uses only spurcore's documented plugin API (`spurcore.api`, docs/api.md). This module holds
what registering the method needs (its options and spec); the method itself is in `method.py`,
imported when a JTT stage runs, so that `spur --help` never waits for torch.
"""

from __future__ import annotations

from typing import Literal

import attrs

from spurcore import hookimpl
from spurcore.api import MitigationSpec, lazy, lazy_exports, non_negative, positive

__all__ = ["JTT", "JTTError", "JTTOptions", "upsampled_order"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "JTT": "spurcore_jtt.method:JTT",
    "JTTError": "spurcore_jtt.method:JTTError",
    "upsampled_order": "spurcore_jtt.method:upsampled_order",
})


@attrs.frozen(kw_only=True)
class JTTOptions:
    """`upweight` is the paper's lambda_up: each error appears 1 + upweight times per epoch.
    `identification_epoch` is the paper's T: 0 takes the errors of the model this stage starts
    from; N > 0 those of epoch N of the `[init]` run's stage (an ERM run stopped early makes
    errors a model trained to interpolation no longer makes)."""

    upweight: int = attrs.field(default=20, validator=positive)
    restart: Literal["initial", "continue"] = "initial"
    identification_epoch: int = attrs.field(default=0, validator=non_negative)


@hookimpl
def spurcore_register_mitigations():
    return [MitigationSpec(
        name="jtt", kind="train", options=JTTOptions, factory=lazy("spurcore_jtt.method:JTT"),
        search_space={"upweight": [5, 20, 50, 100], "identification_epoch": [0, 1, 2, 5]},
        fine_tunes=True,  # it starts from an identification model: comparisons start it from the baseline run
        description="Just Train Twice: up-weight the training errors of the previous stage's model, retrain",
    )]
