"""The baselines that change only which training examples an epoch shows: group- or
class-balanced draws with replacement (SubpopBench's ReSample) and a balanced subsample of the
training set (SUBG and SUBY, Idrissi et al., CLeaR 2022), passed over until an epoch is as long
as ERM's. The loss stays ERM's."""

from __future__ import annotations

import numpy as np
import torch

from spurcore import hookimpl
from spurcore.api import atomic, balanced_subset, balanced_weights
from spurcore_baselines.options import SubsampleOptions
from spurcore_baselines.weights import TrainLabels


def balanced_draws(labels: np.ndarray, generator: torch.Generator) -> torch.Tensor:
    """As many draws with replacement as there are examples, every label equally likely."""
    weights = torch.from_numpy(balanced_weights(labels))
    return torch.multinomial(weights, len(weights), replacement=True, generator=generator)


class Resample(TrainLabels):
    """Every epoch, as many examples as the training set has, drawn with replacement so that
    every label (group or class) is drawn equally often in expectation."""

    def __init__(self, options: None, by: str) -> None:
        self.options, self.by = options, by

    @hookimpl
    def spurcore_stage_start(self, run):
        self.read_labels(run.data)

    @hookimpl
    def spurcore_train_sampler(self, generator):
        return balanced_draws(self.labels, generator)


class Subsample(TrainLabels):
    """One balanced subset of the training set, drawn once per run from its seed and stage (every
    label cut to the rarest one's count). An epoch passes over it, reshuffled each pass, as many
    times as it takes to show as many examples as the training set has (`epoch = "train"`), or
    once (`epoch = "subset"`)."""

    def __init__(self, options: SubsampleOptions, by: str) -> None:
        self.options, self.by = options, by

    @hookimpl
    def spurcore_stage_start(self, run, stage):
        self.read_labels(run.data)
        rng = np.random.default_rng([run.config.seed % 2**32, stage.index])
        self.subset = balanced_subset(self.labels, rng)
        kept = np.bincount(self.labels[self.subset], minlength=len(self.counts))
        atomic.write_json(run.out.stage_dir(stage.key) / "subsample.json", {
            "by": self.by, "examples": int(len(self.subset)), "of": int(len(self.labels)),
            "per_label": kept.tolist(), "counts": self.counts.tolist()})
        run.log(f"stage {stage.key}: {self.by}-balanced subsample of {len(self.subset)} of {len(self.labels)} examples")

    @hookimpl
    def spurcore_train_sampler(self, generator):
        subset = torch.from_numpy(self.subset)
        size = len(self.labels) if self.options.epoch == "train" else len(subset)
        passes = -(-size // len(subset))
        return torch.cat([subset[torch.randperm(len(subset), generator=generator)] for _ in range(passes)])[:size]
