"""LfF's stage object: the biased network, the per-example moving losses of both networks and
the weighted loss (the method is described in the package docstring)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from spurcore import hookimpl
from spurcore_lff import LfFOptions

BIASED = "biased"  # the auxiliary network's name in the stage's checkpoints


def gce_loss(logits: torch.Tensor, y: torch.Tensor, q: float) -> torch.Tensor:
    """Per-example generalized cross-entropy as the authors' code computes it: the cross-entropy
    weighted by q * p_y^q (p_y not differentiated), whose gradient is q times that of the
    closed form (1 - p_y^q) / q. Examples the network already finds hard pull on it less."""
    p_y = logits.float().softmax(1).gather(1, y[:, None]).squeeze(1).detach()
    return F.cross_entropy(logits.float(), y, reduction="none") * p_y.pow(q) * q


class MovingLoss:
    """Each training example's loss as an exponential moving average (`alpha` on the past; an
    example's first loss is taken as it is), and the largest average of each class."""

    def __init__(self, labels: torch.Tensor, n_classes: int, alpha: float) -> None:
        self.labels, self.n_classes, self.alpha = labels, n_classes, alpha
        self.values = torch.zeros(len(labels), dtype=torch.float64)
        self.seen = torch.zeros(len(labels), dtype=torch.bool)

    def update(self, index: torch.Tensor, losses: torch.Tensor) -> None:
        index, losses = index.cpu(), losses.detach().double().cpu()
        past = torch.where(self.seen[index], self.values[index], losses)
        self.values[index] = self.alpha * past + (1 - self.alpha) * losses
        self.seen[index] = True

    def normalized(self, index: torch.Tensor) -> torch.Tensor:
        """The averages of `index`, divided by the largest average of each one's class."""
        index = index.cpu()
        largest = torch.zeros(self.n_classes, dtype=torch.float64).scatter_reduce(
            0, self.labels, self.values, reduce="amax")
        return self.values[index] / largest[self.labels[index]].clamp(min=1e-12)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"values": self.values.clone(), "seen": self.seen.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.values, self.seen = state["values"].to(torch.float64), state["seen"].to(torch.bool)


def relative_difficulty(biased: torch.Tensor, debiased: torch.Tensor) -> torch.Tensor:
    """W = CE_b / (CE_b + CE_d): near 1 where the biased network fails and the model does not."""
    return biased / (biased + debiased + 1e-8)


class LfF:
    def __init__(self, options: LfFOptions) -> None:
        self.options = options
        self.biased: torch.nn.Module | None = None
        self.losses: dict[str, MovingLoss] = {}

    @hookimpl
    def spurcore_prepare_model(self, run, stage, model):
        self.biased = stage.add_auxiliary(BIASED, copy.deepcopy(model))
        labels = torch.tensor(run.data.splits["train"].y, dtype=torch.long)  # a copy, on the CPU
        self.losses = {name: MovingLoss(labels, run.data.n_classes, self.options.alpha)
                       for name in ("biased", "debiased")}

    @hookimpl
    def spurcore_train_loss(self, model, batch):
        logits = model(batch.x, index=batch.index)
        biased_logits = self.biased(batch.x, index=batch.index)
        ce = F.cross_entropy(logits.float(), batch.y, reduction="none")
        biased_ce = F.cross_entropy(biased_logits.float(), batch.y, reduction="none")
        self.losses["biased"].update(batch.index, biased_ce)
        self.losses["debiased"].update(batch.index, ce)
        weight = relative_difficulty(self.losses["biased"].normalized(batch.index),
                                     self.losses["debiased"].normalized(batch.index)).to(ce)
        return (ce * weight + gce_loss(biased_logits, batch.y, self.options.q)).mean()

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {name: moving.state_dict() for name, moving in self.losses.items()}

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        for name, moving in self.losses.items():
            moving.load_state_dict(state[name])
