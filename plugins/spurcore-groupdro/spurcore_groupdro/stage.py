"""Group DRO's stage object: per-group losses, the exponentiated-gradient weights q, and
group-balanced sampling (the method is described in the package docstring)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from spurcore import hookimpl
from spurcore.api import balanced_weights
from spurcore_groupdro import GroupDROOptions


def group_losses(losses: torch.Tensor, groups: torch.Tensor, n_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss of each group in the batch (0 where absent) and which groups are present."""
    sums = torch.zeros(n_groups, dtype=losses.dtype, device=losses.device).index_add(0, groups, losses)
    counts = torch.bincount(groups, minlength=n_groups).to(losses.dtype)
    return sums / counts.clamp(min=1), counts > 0


def update_weights(q: torch.Tensor, losses: torch.Tensor, present: torch.Tensor, eta: float) -> torch.Tensor:
    """One exponentiated-gradient step on the groups present in the batch, renormalised."""
    q = q * torch.exp(eta * losses.detach() * present)
    return q / q.sum()


class GroupDRO:
    def __init__(self, options: GroupDROOptions) -> None:
        self.options = options
        self.q: torch.Tensor | None = None
        self.groups: torch.Tensor | None = None
        self.bonus: torch.Tensor | None = None

    @hookimpl
    def spurcore_stage_start(self, run):
        self.use_groups(run.data.groups("train"), run.data.n_groups)

    def use_groups(self, groups: np.ndarray, n_groups: int) -> None:
        """Train over these groups of the training examples, uniform weights to start: the
        attribute groups here, groups a method inferred without attribute labels in EIIL."""
        self.groups = torch.as_tensor(np.array(groups, dtype=np.int64))  # a copy
        self.q = torch.full((n_groups,), 1.0 / n_groups, dtype=torch.float64)
        counts = np.bincount(self.groups.numpy(), minlength=n_groups)
        self.bonus = torch.as_tensor(self.options.adjustment / np.sqrt(np.maximum(counts, 1)))

    @hookimpl
    def spurcore_train_sampler(self, run, generator):
        if not self.options.balanced_sampling:
            return None
        weights = torch.from_numpy(balanced_weights(self.groups.numpy()))
        return torch.multinomial(weights, len(weights), replacement=True, generator=generator)

    @hookimpl
    def spurcore_train_loss(self, model, batch):
        groups = self.groups[batch.index.cpu()].to(batch.y.device)
        losses = F.cross_entropy(model(batch.x, index=batch.index), batch.y, reduction="none").float()
        per_group, present = group_losses(losses, groups, len(self.q))
        adjusted = per_group + self.bonus.to(per_group) * present
        self.q = update_weights(self.q.to(per_group.device), adjusted.double(), present, self.options.eta)
        return (self.q.to(per_group) * adjusted).sum()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"q": self.q.detach().cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.q = state["q"].to(torch.float64)
