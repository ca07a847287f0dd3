"""The baselines that ask for invariance across environments, each attribute value of a batch
being one environment (as SubpopBench forms them; reads the training split's attribute labels):
IRMv1 (Arjovsky et al., 2019) penalises each environment's gradient with respect to a scale on
the logits; CORAL (Sun & Saenko, ECCV 2016) and MMD (Li et al., CVPR 2018) penalise the distance
between the environments' feature distributions."""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F

from spurcore import hookimpl
from spurcore_baselines.options import IRMOptions, MatchingOptions

MMD_GAMMAS = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)  # the bandwidths DomainBed and SubpopBench sum


def environments(attributes: torch.Tensor) -> list[torch.Tensor]:
    """The positions in the batch of each attribute value present, in increasing value."""
    return [torch.nonzero(attributes == value).flatten() for value in torch.unique(attributes)]


def irm_penalty(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """IRMv1's penalty on one environment, as the authors estimate it without bias: the product
    of the gradients, with respect to a scale of 1 on the logits, of the risks of its even and
    odd examples. Needs at least two examples."""
    scale = torch.ones((), device=logits.device, requires_grad=True)
    first = F.cross_entropy(logits[::2].float() * scale, y[::2])
    second = F.cross_entropy(logits[1::2].float() * scale, y[1::2])
    grad_first = torch.autograd.grad(first, [scale], create_graph=True)[0]
    grad_second = torch.autograd.grad(second, [scale], create_graph=True)[0]
    return grad_first * grad_second


def coral_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The mean squared difference of the means plus that of the covariances."""
    mean_x, mean_y = x.mean(0, keepdim=True), y.mean(0, keepdim=True)
    cov_x = (x - mean_x).T @ (x - mean_x) / (len(x) - 1)
    cov_y = (y - mean_y).T @ (y - mean_y) / (len(y) - 1)
    return (mean_x - mean_y).pow(2).mean() + (cov_x - cov_y).pow(2).mean()


def gaussian_kernel(x: torch.Tensor, y: torch.Tensor, gammas=MMD_GAMMAS) -> torch.Tensor:
    """sum over gamma of exp(-gamma * |x_i - y_j|^2), for every pair (i, j)."""
    # |x|^2 + |y|^2 - 2 x.y rather than cdist, whose square root has no gradient at distance 0
    distances = (x.pow(2).sum(1)[:, None] + y.pow(2).sum(1)[None, :] - 2 * x @ y.T).clamp_min(0)
    return sum(torch.exp(-gamma * distances) for gamma in gammas)


def mmd_distance(x: torch.Tensor, y: torch.Tensor, gammas=MMD_GAMMAS) -> torch.Tensor:
    """The squared maximum mean discrepancy under `gaussian_kernel` (the biased estimate)."""
    return (gaussian_kernel(x, x, gammas).mean() + gaussian_kernel(y, y, gammas).mean()
            - 2 * gaussian_kernel(x, y, gammas).mean())


DISTANCES = {"coral": coral_distance, "mmd": mmd_distance}


def matching_penalty(features: torch.Tensor, groups: list[torch.Tensor], distance) -> torch.Tensor:
    """The mean `distance` over every pair of environments with at least two examples (0 when
    fewer than two have)."""
    usable = [features[g] for g in groups if len(g) >= 2]
    pairs = list(itertools.combinations(usable, 2))
    if not pairs:
        return features.sum() * 0.0
    return sum(distance(x.float(), y.float()) for x, y in pairs) / len(pairs)


class AttributeEnvironments:
    """A stage that reads each training example's attribute value, its environment."""

    @hookimpl
    def spurcore_stage_start(self, run):
        self.attributes = torch.tensor(np.asarray(run.data.splits["train"].a), dtype=torch.long)  # a copy

    def batch_environments(self, batch) -> list[torch.Tensor]:
        return [e.to(batch.y.device) for e in environments(self.attributes[batch.index.cpu()])]


class IRM(AttributeEnvironments):
    """The mean over environments of their risks, plus the mean IRMv1 penalty weighted 1 for the
    first `anneal_steps` steps and `penalty` after; once that weight exceeds 1 the loss is divided
    by it, as in the authors' code, to keep the gradients' scale. Counts its steps in its state."""

    def __init__(self, options: IRMOptions) -> None:
        self.options = options
        self.steps = 0

    @hookimpl
    def spurcore_train_loss(self, model, batch):
        logits = model(batch.x, index=batch.index)
        groups = self.batch_environments(batch)
        risk = sum(F.cross_entropy(logits[g].float(), batch.y[g]) for g in groups) / len(groups)
        penalised = [irm_penalty(logits[g], batch.y[g]) for g in groups if len(g) >= 2]
        penalty = sum(penalised) / len(penalised) if penalised else risk * 0.0
        weight = self.options.penalty if self.steps >= self.options.anneal_steps else 1.0
        self.steps += 1
        loss = risk + weight * penalty
        return loss / weight if weight > 1.0 else loss

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"steps": torch.tensor(self.steps)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.steps = int(state["steps"])


class Matching(AttributeEnvironments):
    """The mean cross-entropy plus `penalty` times the mean distance (CORAL's or MMD's) between
    the penultimate features of every two environments of the batch."""

    def __init__(self, options: MatchingOptions, kernel: str) -> None:
        self.options, self.distance = options, DISTANCES[kernel]

    @hookimpl
    def spurcore_train_loss(self, model, batch):
        features = model.features(batch.x, index=batch.index)
        loss = F.cross_entropy(model.head(features).float(), batch.y)
        return loss + self.options.penalty * matching_penalty(features, self.batch_environments(batch), self.distance)
