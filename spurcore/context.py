"""What hooks see: the run, the current stage, and the candidates a selector scores."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from spurcore.building import ModelBuilder
    from spurcore.config import PipelineConfig, StageConfig, TrainConfig
    from spurcore.data import SpuriousData
    from spurcore.device import Device
    from spurcore.model import SpurModel
    from spurcore.planning import Plan
    from spurcore.plugins import Registry
    from spurcore.rundir import RunDir
    from spurcore.specs import MitigationSpec


@attrs.define(kw_only=True)
class RunContext:
    """One run of a pipeline: its plan (`plan.config` is the resolved config, also `config`),
    data, device, directory, and the registry of its plugins (`plugins`, read only).

    `plugins` (a `spurcore.plugins.Registry`): `plugins.get(kind, name)` is a registered spec
    (`run.plugins.get("mitigations", "dfr")`), `plugins.names(kind)` the names of a kind, and
    `open_run(path, run.plugins)` reads another run with the plugins of this one; hooks never
    load, block or register plugins.
    `data` is built the first time it is read (a run read back only to list its epochs builds
    none). `initial_model()` builds, on the run's device, the model the pipeline started from
    (the seeded fresh backbone and head, or `[init]`'s model) without touching any random state:
    for methods that retrain from scratch after an earlier stage (JTT's final model).
    `quiet`: the run shows nothing while it works (`spur run --quiet`, a sweep's trials): an
    observer that displays progress checks it; what the run computes and writes is the same.
    """

    plan: Plan
    device: Device
    out: RunDir
    plugins: Registry
    models: ModelBuilder
    build_data: Callable[[], SpuriousData] | None = attrs.field(default=None, repr=False)
    resumed: bool = False
    quiet: bool = False
    log: Callable[[str], None] = print
    _data: SpuriousData | None = attrs.field(default=None, repr=False)

    @property
    def config(self) -> PipelineConfig:
        return self.plan.config

    @property
    def data(self) -> SpuriousData:
        if self._data is None:
            self._data = self.build_data()  # given one or the other (the runner builds it first)
        return self._data

    def initial_model(self) -> SpurModel:
        return self.models.initial_model(self)


@attrs.frozen
class Auxiliary:
    """A network a stage's method trains beside the model (`StageContext.add_auxiliary`), with
    the function that builds its optimizer from its parameters (None: the stage's settings)."""

    module: torch.nn.Module
    optimizer: Callable[[Any], torch.optim.Optimizer] | None = None


@attrs.define(kw_only=True)
class StageContext:
    """One stage of a run. `model` is the model being trained or changed; `optimizer` and
    `scheduler` exist for train stages once training starts. `first_epoch` is the first epoch
    this process trains: 1, or, when a resumed run continues the stage, one past its last
    checkpoint (the epochs before it are not trained, evaluated or announced again).
    `auxiliary`: the networks the method trains beside the model, by name (`add_auxiliary`).
    A fine-tuning stage (`MitigationSpec.fine_tunes`) starts at `first_epoch` 0: the model it
    receives is evaluated and checkpointed as epoch 0, a candidate for selection like any
    epoch. `variants`: the stage's inference variants (`spurcore_inference_variants`), and
    `variant` the one the model is in now (None when the stage has none)."""

    index: int
    config: StageConfig
    spec: MitigationSpec
    options: Any
    train: TrainConfig
    method: object
    model: SpurModel
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    first_epoch: int = 1
    auxiliary: dict[str, Auxiliary] = attrs.field(factory=dict)
    variants: dict[str, Callable[[SpurModel], None]] | None = None
    variant: str | None = None

    def add_auxiliary(self, name: str, module: torch.nn.Module,
                      optimizer: Callable[[Any], torch.optim.Optimizer] | None = None) -> torch.nn.Module:
        """Train `module` beside the model for this stage only (LfF's biased network, a
        contrastive projection head), and return it. Call it from `spurcore_prepare_model`.

        The kernel moves it to the run's device, puts it in train mode every epoch, builds its
        optimizer (`optimizer(parameters)`, or the stage's `[train]` optimizer settings), clears
        and steps it with the stage's optimizer on every batch (the loss the method returns
        reaches it through autograd), and saves its weights and optimizer state in every
        checkpoint of the stage, which `--resume` puts back. It is not part of the model: later
        stages, `[init]` runs, tracers and post-hoc methods never see it, and a selected
        checkpoint loads into the model without it.
        """
        if self.optimizer is not None:
            raise RuntimeError(f"stage {self.key}: add_auxiliary({name!r}) after training started; call it in "
                               f"spurcore_prepare_model")
        if name in self.auxiliary:
            raise ValueError(f"stage {self.key}: an auxiliary network named {name!r} exists already")
        self.auxiliary[name] = Auxiliary(module, optimizer)
        return module

    def use_variant(self, name: str | None) -> None:
        """Switch `model` to inference variant `name` (None: leave it as it is)."""
        if name is None:
            return
        if not self.variants or name not in self.variants:
            raise KeyError(f"stage {self.key}: no inference variant {name!r} "
                           f"(it has {', '.join(self.variants or {}) or 'none'})")
        self.variants[name](self.model)
        self.variant = name

    @property
    def name(self) -> str:
        return self.config.label

    @property
    def key(self) -> str:
        """The stage's directory name inside the run: `<index>-<name>`."""
        return f"{self.index}-{self.name}"


@attrs.frozen(kw_only=True)
class Candidate:
    """A model a selector may choose: an epoch of a stage (in one of its inference variants,
    `variant`, when it has several), with metrics per split.

    `load_model()` rebuilds that model (for selectors that look inside it, like SFit);
    `data` is the run's dataset.
    """

    stage: str
    epoch: int
    metrics: Mapping[str, Mapping[str, Any]]
    load_model: Callable[[], SpurModel] | None = None
    data: SpuriousData | None = None
    variant: str | None = None
