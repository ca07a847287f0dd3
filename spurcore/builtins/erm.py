"""ERM: plain empirical risk minimisation, and the default training loss every stage falls
back to when its method does not shape the loss."""

from __future__ import annotations

from spurcore.hookspecs import hookimpl
from spurcore.specs import MitigationSpec


class ERM:
    """The ERM stage object: it adds nothing, so the default loss below trains the model."""

    def __init__(self, options: None) -> None:
        self.options = options


@hookimpl(trylast=True)
def spurcore_train_loss(model, batch):
    import torch.nn.functional as F  # on use: listing plugins imports no torch

    return F.cross_entropy(model(batch.x, index=batch.index), batch.y)


@hookimpl
def spurcore_register_mitigations():
    return [MitigationSpec(name="erm", factory=ERM, kind="train",
                           description="Empirical risk minimisation: average cross-entropy over the training set.")]
