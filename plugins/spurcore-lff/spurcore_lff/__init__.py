"""Learning from Failure (Nam et al., NeurIPS 2020): a train stage that trains two networks at
once. A biased network, trained with the generalized cross-entropy (GCE, q = 0.7), learns the
easy, spurious rule first and fails on the examples that contradict it; the model (the
debiased network) is trained with each example's cross-entropy weighted by

    W(x) = CE_b(x) / (CE_b(x) + CE_d(x)),

large where the biased network fails and the model does not. As in the authors' code, each
network's per-example losses are exponential moving averages over the epochs (`alpha` = 0.7),
divided by their class's largest average before W is formed. No group labels are read.

The biased network is an auxiliary network of the stage (`StageContext.add_auxiliary`): a copy
of the model as the stage starts, with its own optimizer (the stage's `[train]` settings),
checkpointed and resumed with the stage, and never part of the model that later stages, `[init]`
runs, tracers and post-hoc methods see.
"""

from __future__ import annotations

import attrs

from spurcore import hookimpl
from spurcore.api import MitigationSpec, fraction, lazy, lazy_exports, positive

__all__ = ["LfF", "LfFOptions", "MovingLoss", "gce_loss", "relative_difficulty"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "LfF": "spurcore_lff.stage:LfF",
    "MovingLoss": "spurcore_lff.stage:MovingLoss",
    "gce_loss": "spurcore_lff.stage:gce_loss",
    "relative_difficulty": "spurcore_lff.stage:relative_difficulty",
})


@attrs.frozen(kw_only=True)
class LfFOptions:
    """`q`: GCE's exponent (the larger, the more the biased network ignores hard examples);
    `alpha`: the moving average's weight on the past."""

    q: float = attrs.field(default=0.7, validator=positive)
    alpha: float = attrs.field(default=0.7, validator=fraction)


@hookimpl
def spurcore_register_mitigations():
    return [MitigationSpec(
        name="lff", kind="train", options=LfFOptions, factory=lazy("spurcore_lff.stage:LfF"),
        needs_attributes=(),
        search_space={"q": [0.5, 0.7, 0.9], "alpha": [0.5, 0.7, 0.9]},
        description="Learning from Failure: a GCE-trained biased network beside the model, whose failures "
                    "weight the model's loss (no group labels)",
    )]
