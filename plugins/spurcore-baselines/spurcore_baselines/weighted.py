"""The baselines that change the loss of each training example: re-weighting by label
(ReWeight, SqrtReWeight, the class-balanced loss), the losses for imbalance (focal, LDAM with
deferred re-weighting, balanced softmax) and CVaR DRO. The order of examples stays a plain
shuffle."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from spurcore import hookimpl
from spurcore_baselines.losses import cvar, focal_loss, ldam_margins, log_priors, subtract_margin
from spurcore_baselines.options import CVaROptions, EffectiveNumberOptions, FocalOptions, LDAMOptions
from spurcore_baselines.weights import TrainLabels, effective_number, inverse_frequency, label_counts


def class_counts(data) -> np.ndarray:
    """How many training examples each class has (no attribute read)."""
    return label_counts(np.asarray(data.splits["train"].y), data.n_classes)


class Reweight(TrainLabels):
    """The mean over the batch of each example's cross-entropy times its label's weight, the
    weights `label_weights()` fixes when the stage starts (inverse frequency^power here)."""

    def __init__(self, options, by: str, power: float = 1.0) -> None:
        self.options, self.by, self.power = options, by, power

    def label_weights(self) -> np.ndarray:
        return inverse_frequency(self.counts, self.power)

    def logits(self, model, batch) -> torch.Tensor:
        return model(batch.x, index=batch.index)

    @hookimpl
    def spurcore_stage_start(self, run):
        self.read_labels(run.data)
        self.weights = torch.as_tensor(self.label_weights(), dtype=torch.float32)
        self.example_labels = torch.from_numpy(self.labels)

    @hookimpl
    def spurcore_train_loss(self, model, batch):
        weights = self.weights[self.example_labels[batch.index.cpu()]].to(batch.y.device)
        return (F.cross_entropy(self.logits(model, batch).float(), batch.y, reduction="none") * weights).mean()


class ClassBalanced(Reweight):
    """CBLoss: weights by inverse effective number, over groups as SubpopBench weights them."""

    def __init__(self, options: EffectiveNumberOptions) -> None:
        super().__init__(options, by="group")

    def label_weights(self) -> np.ndarray:
        return effective_number(self.counts, self.options.beta)


class Focal:
    def __init__(self, options: FocalOptions) -> None:
        self.options = options

    @hookimpl
    def spurcore_train_loss(self, model, batch):
        return focal_loss(model(batch.x, index=batch.index), batch.y, self.options.gamma).mean()


class LDAM:
    """The label-distribution-aware margin loss, s * (logits - the class's margin on its own
    logit), and after `drw_start` of the stage's epochs its deferred re-weighting: each class's
    loss weighted by its inverse effective number, the weighted mean as the paper's code takes it."""

    def __init__(self, options: LDAMOptions) -> None:
        self.options = options
        self.deferred = False

    @hookimpl
    def spurcore_stage_start(self, run):
        counts = class_counts(run.data)
        self.margins = ldam_margins(counts, self.options.max_margin)
        self.class_weights = torch.as_tensor(effective_number(counts, self.options.drw_beta), dtype=torch.float32)

    @hookimpl
    def spurcore_epoch_start(self, stage, epoch):
        self.deferred = reweighted_epoch(epoch, stage.train.epochs, self.options.drw_start)

    @hookimpl
    def spurcore_train_loss(self, model, batch):
        logits = subtract_margin(model(batch.x, index=batch.index).float(), batch.y, self.margins)
        losses = F.cross_entropy(self.options.scale * logits, batch.y, reduction="none")
        if not self.deferred:
            return losses.mean()
        weights = self.class_weights[batch.y.cpu()].to(losses.device)
        return (losses * weights).sum() / weights.sum()


def reweighted_epoch(epoch: int, epochs: int, start: float) -> bool:
    """Whether LDAM's deferred re-weighting is on in `epoch` (from 1) of `epochs`: after the first
    floor(start * epochs) epochs; never when start is 1."""
    return start < 1 and epoch > math.floor(start * epochs)


class BalancedSoftmax:
    """The cross-entropy of the logits plus log class priors: training on the imbalanced
    distribution fits the balanced one; prediction uses the plain logits."""

    def __init__(self, options: None) -> None:
        self.options = options

    @hookimpl
    def spurcore_stage_start(self, run):
        self.priors = log_priors(class_counts(run.data))

    @hookimpl
    def spurcore_train_loss(self, model, batch):
        logits = model(batch.x, index=batch.index).float()
        return F.cross_entropy(logits + self.priors.to(logits.device), batch.y)


class CVaRDRO:
    def __init__(self, options: CVaROptions) -> None:
        self.options = options

    @hookimpl
    def spurcore_train_loss(self, model, batch):
        losses = F.cross_entropy(model(batch.x, index=batch.index).float(), batch.y, reduction="none")
        return cvar(losses, self.options.alpha)
