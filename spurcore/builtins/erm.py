"""ERM: plain empirical risk minimisation. Its stage object adds nothing: a train stage whose
method shapes neither the order nor the loss trains on the kernel's default, the mean
cross-entropy of every batch (`spurcore.training.default_loss`)."""

from __future__ import annotations

from spurcore.hookspecs import hookimpl
from spurcore.specs import MitigationSpec


class ERM:
    """The ERM stage object: it adds nothing, so the default loss trains the model."""

    def __init__(self, options: None) -> None:
        self.options = options


@hookimpl
def spurcore_register_mitigations():
    return [MitigationSpec(name="erm", factory=ERM, kind="train",
                           description="Empirical risk minimisation: average cross-entropy over the training set.")]
