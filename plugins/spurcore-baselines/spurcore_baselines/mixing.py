"""The baselines that train on mixtures of examples: Mixup (Zhang et al., ICLR 2018) pairs the
batch with a shuffled copy of itself under one lambda ~ Beta(alpha, alpha); LISA (Yao et al.,
ICML 2022) pairs each example with one of the same class and another attribute value, or of the
same attribute value and another class, under its own lambda. Both mix image inputs (and, for
inputs that cannot be mixed, such as token ids, the features, as SubpopBench does for text) and
train on the mixed labels.

Randomness comes from a numpy generator seeded by (seed, stage, epoch) at the start of every
epoch, so a resumed run mixes as the uninterrupted one did."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from spurcore import hookimpl
from spurcore_baselines.losses import soft_cross_entropy
from spurcore_baselines.options import LISAOptions, MixupOptions


def epoch_rng(seed: int, stage: int, epoch: int) -> np.random.Generator:
    """The mixing draws of one epoch of one stage."""
    return np.random.default_rng([seed % 2**32, stage, epoch])


def mixed_logits(model, batch, partner: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """The model's logits on lam * x_i + (1 - lam) * x_partner(i), per example i: the inputs
    mixed when they are floating-point tensors, the features otherwise."""
    lam = lam.to(batch.y.device)
    partner = partner.to(batch.y.device)
    if isinstance(batch.x, torch.Tensor) and batch.x.is_floating_point():
        weight = lam.view(-1, *([1] * (batch.x.dim() - 1))).to(batch.x.dtype)
        return model(weight * batch.x + (1 - weight) * batch.x[partner], index=batch.index)
    features = model.features(batch.x, index=batch.index)
    weight = lam[:, None].to(features.dtype)
    return model.head(weight * features + (1 - weight) * features[partner])


def mixed_targets(y: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor, n_classes: int) -> torch.Tensor:
    """lam * onehot(y_i) + (1 - lam) * onehot(y_partner(i))."""
    lam = lam.to(y.device, torch.float32)[:, None]
    onehot = F.one_hot(y, n_classes).to(torch.float32)
    return lam * onehot + (1 - lam) * onehot[partner.to(y.device)]


def mixup_loss(model, batch, partner: torch.Tensor, lam: torch.Tensor, n_classes: int) -> torch.Tensor:
    """The mean cross-entropy of the mixed examples against their mixed labels."""
    logits = mixed_logits(model, batch, partner, lam)
    return soft_cross_entropy(logits, mixed_targets(batch.y, partner, lam, n_classes)).mean()


def lisa_partners(y: np.ndarray, a: np.ndarray, same_class: bool, rng: np.random.Generator) -> np.ndarray:
    """Each example's partner, drawn uniformly among the batch's examples of the same class and
    another attribute value (`same_class`) or of the same attribute value and another class; an
    example without one is its own partner (it is not mixed)."""
    y, a = np.asarray(y), np.asarray(a)
    same_y, same_a = y[:, None] == y[None, :], a[:, None] == a[None, :]
    candidates = same_y & ~same_a if same_class else same_a & ~same_y
    scores = np.where(candidates, rng.random(candidates.shape), -1.0)
    partner = scores.argmax(1)
    alone = ~candidates.any(1)
    partner[alone] = np.flatnonzero(alone)
    return partner


class Mixup:
    def __init__(self, options: MixupOptions) -> None:
        self.options = options

    @hookimpl
    def spurcore_epoch_start(self, run, stage, epoch):
        self.rng = epoch_rng(run.config.seed, stage.index, epoch)

    @hookimpl
    def spurcore_train_loss(self, run, model, batch):
        n = len(batch.y)
        lam = torch.full((n,), float(self.rng.beta(self.options.alpha, self.options.alpha)))
        partner = torch.from_numpy(self.rng.permutation(n))
        return mixup_loss(model, batch, partner, lam, run.data.n_classes)


class LISA:
    """Reads the training split's attribute labels (to pair examples)."""

    def __init__(self, options: LISAOptions) -> None:
        self.options = options

    @hookimpl
    def spurcore_stage_start(self, run):
        self.attributes = np.asarray(run.data.splits["train"].a)
        self.classes = np.asarray(run.data.splits["train"].y)

    @hookimpl
    def spurcore_epoch_start(self, run, stage, epoch):
        self.rng = epoch_rng(run.config.seed, stage.index, epoch)

    @hookimpl
    def spurcore_train_loss(self, run, model, batch):
        index = batch.index.cpu().numpy()
        same_class = bool(self.rng.random() < self.options.p_select)
        partner = lisa_partners(self.classes[index], self.attributes[index], same_class, self.rng)
        lam = self.rng.beta(self.options.alpha, self.options.alpha, len(index))
        return mixup_loss(model, batch, torch.from_numpy(partner), torch.from_numpy(lam), run.data.n_classes)
