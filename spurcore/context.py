"""What hooks see: the run, the current stage, and the candidates a selector scores."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from spurcore.config import PipelineConfig, StageConfig, TrainConfig
    from spurcore.data import SpuriousData
    from spurcore.device import Device
    from spurcore.model import SpurModel
    from spurcore.plugins import Registry
    from spurcore.rundir import RunDir
    from spurcore.specs import MitigationSpec


@attrs.define(kw_only=True)
class RunContext:
    """One run of a pipeline: its resolved config, data, device, directory, and the registry
    of its plugins (`plugins`, read only).

    `plugins` (a `spurcore.plugins.Registry`): `plugins.get(kind, name)` is a registered spec
    (`run.plugins.get("mitigations", "dfr")`), `plugins.names(kind)` the names of a kind, and
    `open_run(path, run.plugins)` reads another run with the plugins of this one; hooks never
    load, block or register plugins.
    `initial_model()` builds, on the run's device, the model the pipeline started from (the
    seeded fresh backbone and head, or `[init]`'s model) without touching any random state:
    for methods that retrain from scratch after an earlier stage (JTT's final model).
    """

    config: PipelineConfig
    data: SpuriousData
    device: Device
    out: RunDir
    plugins: Registry
    initial_model: Callable[[], SpurModel]
    resumed: bool = False
    log: Callable[[str], None] = print


@attrs.define(kw_only=True)
class StageContext:
    """One stage of a run. `model` is the model being trained or changed; `optimizer` and
    `scheduler` exist for train stages once training starts. `first_epoch` is the first epoch
    this process trains: 1, or, when a resumed run continues the stage, one past its last
    checkpoint (the epochs before it are not trained, evaluated or announced again)."""

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

    @property
    def name(self) -> str:
        return self.config.label

    @property
    def key(self) -> str:
        """The stage's directory name inside the run: `<index>-<name>`."""
        return f"{self.index}-{self.name}"


@attrs.frozen(kw_only=True)
class Candidate:
    """A model a selector may choose: an epoch of a stage, with metrics per split.

    `load_model()` rebuilds that model (for selectors that look inside it, like SFit);
    `data` is the run's dataset.
    """

    stage: str
    epoch: int
    metrics: Mapping[str, Mapping[str, Any]]
    load_model: Callable[[], SpurModel] | None = None
    data: SpuriousData | None = None
