"""The observer `dynamics` (`[settings.dynamics]`): records, in every epoch of every training
stage, what the one-run estimators read, from the runner's evaluation of the training split.

Each example's loss and correctness come from the logits of `spurcore_evaluation_batch` on
"train" (eval mode, the deterministic inputs, every example `[train] train_eval` names; the
first inference variant when a stage has several). At `spurcore_evaluation_end` of "train", on
the epochs `curvature_every` names, the observer measures the input-loss curvature of the same
examples with the epoch's model, in float32 and with directions drawn from a generator of its
own, seeded by (seed, stage, epoch); the runner has already saved the random states around the
train pass, so training is the same with or without it. Then it writes the epoch's file
(`dynamics.write_epoch`), before the runner checkpoints the epoch.

A stage that does not evaluate its training split (`train_eval = "none"`) is refused before the
run starts: the estimates need a pass over the training examples every epoch, which is what
that setting turns off.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from spurcore import hookimpl
from spurcore.api import ConfigError, iterate_batches, writes_files
from spurcore_memorization.curvature import input_curvature
from spurcore_memorization.dynamics import write_epoch
from spurcore_memorization.options import SETTINGS_KEY, DynamicsSettings

WHERE = f"settings.{SETTINGS_KEY}"


def first_variant(stage: Any) -> str | None:
    return next(iter(stage.variants)) if stage.variants else None


class DynamicsObserver:
    def __init__(self, settings: DynamicsSettings) -> None:
        self.settings = settings
        self.rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.since = time.perf_counter()

    @hookimpl
    def spurcore_run_check(self, run, models):
        every = self.settings.curvature_every
        for stage in run.plan.stages:
            if stage.spec.kind != "train":
                continue
            where = f"stages[{stage.index}] ({stage.key})"
            if stage.train.train_eval == "none":
                raise ConfigError(f"{WHERE}: {where} does not evaluate its training split (train_eval = \"none\"), "
                                  f"which the record is read from; set [train] train_eval = \"full\"")
            if every > stage.train.epochs:
                raise ConfigError(f"{WHERE}.curvature_every: {every} is more than the {stage.train.epochs} epochs of "
                                  f"{where}; no epoch would be measured")
        if every:
            x = next(iter(iterate_batches(run.data.splits["train"], torch.arange(1), 1))).x
            if not (isinstance(x, torch.Tensor) and torch.is_floating_point(x)):
                raise ConfigError(f"{WHERE}.curvature_every: the input-loss curvature needs floating-point input "
                                  f"tensors; dataset {run.data.name!r} gives {type(x).__name__} inputs "
                                  f"(set curvature_every = 0)")

    @hookimpl
    def spurcore_stage_start(self):
        self.since = time.perf_counter()

    def wants(self, stage: Any, epoch: int, split: str) -> bool:
        return (split == "train" and epoch >= 1 and stage.spec.kind == "train"
                and stage.variant == first_variant(stage))

    @hookimpl
    def spurcore_evaluation_start(self, stage, epoch, split):
        if self.wants(stage, epoch, split):
            self.rows = []

    @hookimpl
    def spurcore_evaluation_batch(self, stage, epoch, split, batch, logits):
        if self.wants(stage, epoch, split):
            loss = F.cross_entropy(logits.float(), batch.y, reduction="none")
            self.rows.append((batch.index, loss.detach(), logits.argmax(1) == batch.y))

    @hookimpl
    def spurcore_evaluation_end(self, run, stage, epoch, split):
        if not self.wants(stage, epoch, split):
            return
        positions, loss, correct = (torch.cat(column).cpu().numpy() for column in zip(*self.rows))
        self.rows = []
        arrays = {"positions": positions.astype(np.int64), "loss": loss.astype(np.float32), "correct": correct,
                  "examples": np.array(len(run.data.splits["train"]))}
        arrays["curvature_seconds"] = np.array(0.0)
        if self.settings.measures_curvature(epoch):
            started = time.perf_counter()
            arrays["curvature"] = self.curvature(run, stage, epoch, positions)
            arrays["curvature_seconds"] = np.array(time.perf_counter() - started)
        arrays["seconds"] = np.array(time.perf_counter() - self.since)
        arrays["threads"] = np.array(torch.get_num_threads())
        if writes_files():
            write_epoch(run.out.path, stage.key, epoch, arrays)
        self.since = time.perf_counter()

    def curvature(self, run: Any, stage: Any, epoch: int, positions: np.ndarray) -> np.ndarray:
        """The curvature of the examples at `positions` with the epoch's model, batch by batch."""
        settings, device = self.settings, run.device
        seed = int(np.random.SeedSequence([run.config.seed, stage.index, epoch]).generate_state(1)[0])
        generator = torch.Generator().manual_seed(seed)
        found = []
        for batch in iterate_batches(run.data.splits["train"], torch.from_numpy(positions), stage.train.eval_batch_size,
                                     **device.loader_options(stage.train.num_workers)):
            batch = device.move(batch, channels_last=stage.train.channels_last)
            found.append(input_curvature(stage.model, batch.x.float(), batch.y, h=settings.curvature_h,
                                         directions=settings.curvature_directions, generator=generator,
                                         index=batch.index).cpu())
        return torch.cat(found).numpy()


def observer(settings: DynamicsSettings | None) -> DynamicsObserver | None:
    """The `ObserverSpec.factory`: an observer when the pipeline has `[settings.dynamics]`."""
    return None if settings is None else DynamicsObserver(settings)
