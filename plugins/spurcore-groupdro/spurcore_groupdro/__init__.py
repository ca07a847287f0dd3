"""Group DRO (Sagawa et al., ICLR 2020; docs/methods/groupdro.md): a train stage that minimises a
weighted sum of per-group losses, the weights q following the groups' losses by
exponentiated gradient ascent, q_g <- q_g * exp(eta * loss_g), renormalised after every batch.

Per batch, loss_g is the mean cross-entropy of the batch's group-g examples (groups absent from
the batch keep their weight), plus the paper's optional generalisation adjustment C / sqrt(n_g)
with n_g the group's training count (`adjustment`, default 0 as in most reported runs). Training
examples are drawn group-balanced (with replacement, one epoch = as many draws as examples) unless
`balanced_sampling = false`. q is part of every checkpoint, so a resumed run continues with the
same weights. Reads attribute labels on the training set only.
"""

from __future__ import annotations

import attrs

from spurcore import hookimpl
from spurcore.api import MitigationSpec, lazy, lazy_exports, non_negative, positive

__all__ = ["GroupDRO", "GroupDROOptions", "group_losses", "update_weights"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "GroupDRO": "spurcore_groupdro.stage:GroupDRO",
    "group_losses": "spurcore_groupdro.stage:group_losses",
    "update_weights": "spurcore_groupdro.stage:update_weights",
})


@attrs.frozen(kw_only=True)
class GroupDROOptions:
    eta: float = attrs.field(default=0.01, validator=positive)
    adjustment: float = attrs.field(default=0.0, validator=non_negative)
    balanced_sampling: bool = True


@hookimpl
def spurcore_register_mitigations():
    return [MitigationSpec(
        name="groupdro", kind="train", options=GroupDROOptions, factory=lazy("spurcore_groupdro.stage:GroupDRO"),
        needs_attributes=("train",),
        search_space={"eta": [0.001, 0.01, 0.1], "adjustment": [0.0, 1.0, 2.0]},
        description="Group DRO: exponentiated-gradient weights on per-group losses, group-balanced sampling",
    )]
