"""The pruned twin's stage object: the projection head, the mask drawn every epoch, and the
contrastive loss against the masked twin; imported when a prunedtwin stage runs."""

from __future__ import annotations

import torch
from torch import nn

from spurcore import hookimpl
from spurcore_prunedtwin import PrunedTwinOptions
from spurcore_prunedtwin.augment import two_views
from spurcore_prunedtwin.loss import alignment, nt_xent, nt_xent_stopgrad, supervised
from spurcore_prunedtwin.mask import PROJECTION, NeuronMask, WeightMask, neuron_mask, smallest_weight_mask


class PrunedTwinStage:
    def __init__(self, options: PrunedTwinOptions) -> None:
        self.options = options
        self.mask: NeuronMask | WeightMask | None = None
        self.generator: torch.Generator | None = None
        self.projection: nn.Module | None = None

    @hookimpl
    def spurcore_prepare_model(self, stage, model):
        o = self.options
        if not o.projection:
            return
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(o.seed)
            head = nn.Sequential(nn.Linear(model.feature_dim, model.feature_dim), nn.ReLU(),
                                 nn.Linear(model.feature_dim, o.projection_dim))
        # trained and checkpointed with the stage, never part of the model later stages see
        self.projection = stage.add_auxiliary(PROJECTION, head)

    @hookimpl
    def spurcore_epoch_start(self, run, stage, epoch):
        o = self.options
        # one generator per (seed, stage, epoch): a resumed run draws the same masks and views
        self.generator = torch.Generator().manual_seed(((o.seed * 1_000_003 + stage.index) * 10_007 + epoch) % 2**63)
        # the head's units are never masked: in output space the twin would lose a class's logit
        if o.mask == "smallest-weights":
            self.mask = smallest_weight_mask(stage.model, o.weight_percent)
        else:
            self.mask = neuron_mask(stage.model, o.q, o.criterion, split=run.data.splits["train"],
                                    generator=self.generator, pool=o.pool, sample=o.sample)

    @hookimpl
    def spurcore_train_loss(self, model, batch):
        return self.loss(model, batch)

    def loss(self, model, batch) -> torch.Tensor:
        o = self.options
        if self.mask is None:
            raise RuntimeError("prunedtwin: no mask yet (spurcore_epoch_start builds it)")
        generator = self.generator or torch.Generator().manual_seed(o.seed)
        x1, x2 = two_views(batch.x, generator, o.same_view, o.colour) if o.augment else (batch.x, batch.x)
        features = model.features(x1, index=batch.index)
        logits = model.head(features)
        if o.contrast == "none":
            return o.lam * supervised(logits, batch.y, o.target, o.supervised)
        if o.space == "output":
            ours, theirs = logits.float().softmax(1), self.mask.logits(model, x2, index=batch.index).float().softmax(1)
            contrast = (nt_xent_stopgrad(ours, theirs, o.tau) if o.contrast == "nt-xent"
                        else 0.5 * (alignment(ours, theirs.detach()) + alignment(ours.detach(), theirs)))
        else:
            twin = self.mask.features(model, x2, index=batch.index)
            if self.projection is not None:
                features, twin = self.projection(features), self.projection(twin)
            contrast = nt_xent(features, twin, o.tau) if o.contrast == "nt-xent" else alignment(features, twin)
        return contrast + o.lam * supervised(logits, batch.y, o.target, o.supervised)
