"""A run read back for analysis: its stages, their epochs, which epoch was selected, its data,
and any of its models, without the machinery that ran it.

    run = open_run("runs/erm", plugins)                 # plugins: the manager, or a hook's run.plugins
    run.stages[-1].epochs, run.stages[-1].selected     # checkpointed epochs, the selector's choice
    epoch = run.resolve_epoch(-1, "last")               # "last" | "selected" | N
    model = run.load_model(-1, epoch)                   # inserted layers included, eval mode

The tracer, activation extraction, Grad-CAM, comparisons and `[init] run` all read runs this way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from spurcore.building import ModelBuilder, build_data
from spurcore.context import RunContext
from spurcore.device import Device
from spurcore.errors import SpurcoreError
from spurcore.planning import Plan, RunError, plan_saved
from spurcore.rundir import RunDir

if TYPE_CHECKING:  # pragma: no cover
    from spurcore.config import PipelineConfig, TrainConfig
    from spurcore.context import StageContext
    from spurcore.data import SpuriousData
    from spurcore.model import SpurModel
    from spurcore.plugins import Registry


class FinishedRunError(SpurcoreError):
    """A stage or epoch that the run does not have; the message says what it has."""


@attrs.frozen(kw_only=True)
class FinishedStage:
    """One stage of a run as it stands on disk: `epochs` that have a checkpoint, `selected` the
    epoch its selector kept (None while the stage has not finished), `train` its effective
    training settings."""

    index: int
    key: str
    name: str
    method: str
    kind: str
    epochs: tuple[int, ...]
    selected: int | None
    train: TrainConfig


class FinishedRun:
    """What `open_run` returns: built from the run folder and the plan it saved. Listing stages
    and epochs reads the folder alone; the data is built the first time `data` (or a model)
    is asked for, and models are rebuilt by `spurcore.building.ModelBuilder`."""

    def __init__(self, plan: Plan, out: RunDir, plugins: Registry, device: Device) -> None:
        self.plan = plan
        self.run = RunContext(plan=plan, device=device, out=out, plugins=plugins, models=ModelBuilder(plan, plugins),
                              build_data=lambda: build_data(plan, plugins), resumed=True, log=lambda message: None)
        stages = []
        for planned in plan.stages:
            result = out.stage_result(planned.key)
            stages.append(FinishedStage(
                index=planned.index, key=planned.key, name=planned.config.label, method=planned.spec.name,
                kind=planned.spec.kind, epochs=tuple(out.epochs(planned.key)), train=planned.train,
                selected=None if result is None else int(result["selected"]["epoch"])))
        self.stages: tuple[FinishedStage, ...] = tuple(stages)

    @property
    def path(self) -> Path:
        return self.out.path

    @property
    def out(self) -> RunDir:
        return self.run.out

    @property
    def config(self) -> PipelineConfig:
        return self.plan.config

    @property
    def data(self) -> SpuriousData:
        return self.run.data

    @property
    def device(self) -> Device:
        return self.run.device

    def stage(self, stage: int | str = -1) -> FinishedStage:
        """A stage by index (negative counts from the end), key (`0-erm`) or name."""
        if isinstance(stage, int):
            if not -len(self.stages) <= stage < len(self.stages):
                raise FinishedRunError(f"{self.path}: stage {stage}: the run has {len(self.stages)} stage(s) "
                                       f"(0..{len(self.stages) - 1}, or -1 for the last)")
            return self.stages[stage]
        for found in self.stages:
            if stage in (found.key, found.name):
                return found
        raise FinishedRunError(f"{self.path}: no stage {stage!r} (stages: {', '.join(s.key for s in self.stages)})")

    def resolve_epoch(self, stage: int | str = -1, epoch: int | str = "selected") -> int:
        """The epoch that "last" (the last checkpoint), "selected" (the selector's choice) or N
        names in one stage, checked against its checkpoints."""
        found = self.stage(stage)
        if not found.epochs:
            raise FinishedRunError(f"{self.path}: stage {found.key!r} has no checkpoint; has it run?")
        if epoch == "last":
            return found.epochs[-1]
        if epoch == "selected":
            if found.selected is None:
                raise FinishedRunError(f"{self.path}: stage {found.key!r} has not finished, so no epoch was "
                                       f"selected; name an epoch")
            return found.selected
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch not in found.epochs:
            raise FinishedRunError(f"{self.path}: stage {found.key!r} has no checkpoint for epoch {epoch!r} "
                                   f"(it has {', '.join(map(str, found.epochs))}; or \"last\", \"selected\")")
        return epoch

    def initial_model(self) -> SpurModel:
        """The model this run started from before its first stage (its `[init]` model, or a fresh
        backbone and head seeded by its seed), on the run's device: what a method that retrains
        "from the same initialization" as this run restarts from."""
        return self.run.initial_model()

    def load_model(self, stage: int | str = -1, epoch: int | str = "selected") -> SpurModel:
        """The model of `stage` at `epoch` (see `resolve_epoch`), rebuilt with the layers its
        stages inserted, on the run's device, in eval mode."""
        found = self.stage(stage)
        return self.run.models.load_model(self.run, found.index, self.resolve_epoch(found.index, epoch))

    def load_weights(self, stage: int | str, epoch: int | str) -> dict[str, Any]:
        """The model state dict saved at `epoch` of `stage` (on the CPU)."""
        found = self.stage(stage)
        return self.out.load_checkpoint(found.key, self.resolve_epoch(found.index, epoch))["model"]


def open_run(path: Any, plugins: Registry, *, device: str = "cpu") -> FinishedRun:
    """A finished (or interrupted) run, read back for analysis: `open_run(p, plugins).load_model()`;
    `plugins` is the plugin manager, or a hook's `run.plugins`."""
    out = RunDir(path)
    if not out.config.exists():
        raise RunError(f"{out.path}: not a run directory (no config.toml)")
    planned = plan_saved(out.path, plugins, [f"device={json.dumps(device)}"])
    return FinishedRun(planned, out, plugins, Device.from_config(planned.config.device, planned.config.amp))


def starting_model(run: RunContext, stage: StageContext) -> SpurModel:
    """A fresh copy of the weights that the model `stage` receives was trained from, for methods
    that retrain "from the same initialization" (JTT, EIIL): the pipeline's starting model, or,
    for the first stage of a pipeline that starts from another run (`[init]`, as a sweep starts a
    fine-tuning method from the baseline's run), that run's own starting model."""
    init = run.config.init
    if stage.index == 0 and init is not None:
        return open_run(init.run, run.plugins, device=str(run.device.device)).initial_model()
    return run.initial_model()
