"""Planning a pipeline, and everything checked before a run writes anything.

`plan` resolves every plugin name and validates every option, naming the pipeline's file and
the key on error. The checks that need more than the file come next, in the order `run_pipeline`
makes them: the run an `[init]` starts from (`check_init`), the labels the methods and the
selector read (`check_labels`), and the starting model on two examples (`check_model`).
`plugins` is anything with the plugin registry's read-only methods (`get`, `names`, `specs`,
`require`): the manager, or a hook's `run.plugins`.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import torch

from spurcore import config as cfg
from spurcore.data import SpuriousData, iterate_batches
from spurcore.device import Device
from spurcore.errors import SpurcoreError
from spurcore.lazy import Lazy
from spurcore.plugins import PluginError
from spurcore.rng import kept_rng_state
from spurcore.rundir import RunDir
from spurcore.specs import MitigationSpec, ObserverSpec, SelectorSpec

if TYPE_CHECKING:  # pragma: no cover
    from spurcore.model import SpurModel
    from spurcore.plugins import Registry


class RunError(SpurcoreError):
    """The pipeline cannot run as configured; the message says why and what to do."""


@attrs.frozen(kw_only=True)
class PlannedStage:
    index: int
    config: cfg.StageConfig
    spec: MitigationSpec
    options: Any
    train: cfg.TrainConfig

    @property
    def key(self) -> str:
        return f"{self.index}-{self.config.label}"


@attrs.frozen(kw_only=True)
class Plan:
    """A pipeline with every plugin resolved and every option validated."""

    config: cfg.PipelineConfig
    dataset_options: Any
    backbone_options: Any
    stages: tuple[PlannedStage, ...]
    selector: SelectorSpec
    observers: tuple[tuple[ObserverSpec, Any], ...] = ()  # every observer, with its validated settings or None


def _options(spec: Any, values: dict[str, Any], where: str) -> Any:
    if spec.options is None:
        if values:
            raise cfg.ConfigError(f"{where}: {spec.name!r} takes no options, got {', '.join(values)}")
        return None
    return cfg.structure(spec.options, values, where)


def plan(config: cfg.PipelineConfig, plugins: Registry) -> Plan:
    """Resolve every name and validate every option, or raise naming the file and the key."""
    with naming_the_file(config):
        return _plan(config, plugins)


@contextlib.contextmanager
def naming_the_file(config: cfg.PipelineConfig) -> Iterator[None]:
    """An error (SpurcoreError) of the block, about what the pipeline asks for, names the
    pipeline's file first (`config.source`), unless it does already."""
    try:
        yield
    except SpurcoreError as error:
        if not config.source or str(error).startswith(config.source):
            raise
        raise type(error)(f"{config.source}: {error}") from None


def _get(plugins: Registry, kind: str, name: str, key: str) -> Any:
    try:
        spec = plugins.get(kind, name)
        _import_lazy(spec, kind)
    except SpurcoreError as error:
        raise type(error)(f"{key}: {error}") from None
    return spec


def _import_lazy(spec: Any, kind: str) -> None:
    """Import now what a spec names with `lazy("module:attr")`, so that a module that cannot be
    imported stops the run before it starts, not when its stage (or first selection) comes."""
    for field in attrs.fields(type(spec)):
        target = getattr(spec, field.name)
        if isinstance(target, Lazy):
            try:
                target.resolve()
            except (ImportError, AttributeError) as exc:
                raise PluginError(f"{kind[:-1]} {spec.name!r}: its {field.name} {target.target!r} cannot be "
                                  f"imported: {type(exc).__name__}: {exc}") from None


def _plan(config: cfg.PipelineConfig, plugins: Registry) -> Plan:
    plugins.require(config.requires)
    dataset = _get(plugins, "datasets", config.dataset.name, "dataset.name")
    backbone = _get(plugins, "backbones", config.backbone.name, "backbone.name")
    selector = _get(plugins, "selectors", config.selector, "selector")
    for i, name in enumerate(config.metrics):
        _get(plugins, "metrics", name, f"metrics[{i}]")
    missing = [m for m in selector.metrics if m not in config.metrics]
    if missing:
        raise cfg.ConfigError(f"metrics: selector {selector.name!r} reads {', '.join(missing)}; add it to `metrics`")
    base = cfg.to_dict(config.train)
    stages = []
    for i, stage in enumerate(config.stages):
        spec = _get(plugins, "mitigations", stage.method, f"stages[{i}].method")
        train = cfg.structure(cfg.TrainConfig, {**base, **spec.train_defaults, **stage.train}, f"stages[{i}].train")
        options = _options(spec, stage.options, f"stages[{i}].options")
        if spec.kind == "train" and "train" in selector.splits and train.train_eval == "none":
            raise cfg.ConfigError(
                f"stages[{i}].train.train_eval: selector {selector.name!r} reads the metrics of 'train', "
                f"and this stage evaluates none (train_eval = \"none\"); use \"auto\", \"full\" or \"subset:N\""
            )
        stages.append(PlannedStage(index=i, config=stage, spec=spec, options=options, train=train))
    if stages[0].spec.kind != "train" and config.init is None:
        raise RunError(
            f"stages[0]: {stages[0].spec.name!r} is a post-hoc method; start with a training stage, "
            f"or start from a trained model with [init] run = \"RUN_DIR\""
        )
    return Plan(
        config=config,
        dataset_options=_options(dataset, config.dataset.options, "dataset.options"),
        backbone_options=_options(backbone, config.backbone.options, "backbone.options"),
        stages=tuple(stages),
        selector=selector,
        observers=_observers(config, plugins),
    )


def _observers(config: cfg.PipelineConfig, plugins: Registry) -> tuple[tuple[ObserverSpec, Any], ...]:
    """Every observer with its `[settings.<name>]` validated (None without a table); a table
    that names no observer is an error with the closest name."""
    specs = dict(plugins.specs("observers"))
    for name in config.settings:
        if name not in specs:
            close = difflib.get_close_matches(name, list(specs), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"observers: {', '.join(sorted(specs)) or 'none'}"
            raise cfg.ConfigError(f"settings.{name}: no observer of that name is installed ({hint})")
    found = []
    for name, spec in specs.items():
        table = config.settings.get(name)
        if table is not None and spec.settings is None:
            raise cfg.ConfigError(f"settings.{name}: observer {name!r} takes no settings")
        settings = None if table is None else cfg.structure(spec.settings, table, f"settings.{name}")
        found.append((spec, settings))
    return tuple(found)


def plan_saved(run_dir: Any, plugins: Registry, overrides: Sequence[str] = ()) -> Plan:
    """The plan of the pipeline a run directory saved, for reading the run back: its observers'
    settings are left out, since reading a run needs none of the observers that watched it."""
    config = cfg.load_pipeline(RunDir(run_dir).config, overrides)
    return plan(attrs.evolve(config, settings={}), plugins)


def check_init(plan: Plan, plugins: Registry) -> None:
    """A pipeline that starts from another run's model (`[init]`) must name the backbone and
    the dataset that run trained with (names and options, defaults filled in): weights of
    another width would otherwise load where they fit, and this run's config.toml would
    describe a model it does not hold. Reads only that run's config.toml."""
    init = plan.config.init
    if init is None:
        return
    if not RunDir(init.run).config.exists():
        raise RunError(f"init.run: {init.run}: not a run directory (no config.toml)")
    saved = plan_saved(init.run, plugins)

    def described(planned: Plan, kind: str) -> dict[str, Any]:
        options = getattr(planned, f"{kind}_options")
        return {"name": getattr(planned.config, kind).name, "options": {} if options is None else cfg.to_dict(options)}

    for kind in ("backbone", "dataset"):
        difference = first_difference(described(saved, kind), described(plan, kind), kind)
        if difference is not None:
            key, was, now = difference
            raise RunError(f"init.run: {init.run} was trained with {key} = {was!r}, and this pipeline says {now!r}: "
                           f"the model it starts from must be the one it describes; make [{kind}] match that run's "
                           f"config.toml, or start from a run trained with these settings")


def check_labels(plan: Plan, data: SpuriousData) -> None:
    """Refuse selectors reading splits the data lacks, and methods and selectors that need
    attribute labels the data lacks."""
    selector = plan.selector
    for split in selector.splits:
        if split not in data.splits:
            raise RunError(
                f"selector {selector.name!r} reads the metrics of split {split!r}, and dataset {data.name!r} "
                f"has none (splits: {', '.join(data.splits)})"
            )
        if selector.needs_attributes and not data.splits[split].has_attributes:
            raise RunError(
                f"selector {selector.name!r} needs attribute labels on {split}, and dataset "
                f"{data.name!r} has none there; use a selector that needs none (val-worst-class)"
            )
    for stage in plan.stages:
        for split in stage.spec.attribute_splits(stage.options):
            if split not in data.splits or not data.splits[split].has_attributes:
                raise RunError(
                    f"stages[{stage.index}]: method {stage.spec.name!r} needs attribute labels on "
                    f"{split!r}, and dataset {data.name!r} has none there"
                )


def check_model(plan: Plan, data: SpuriousData, model: SpurModel, device: Device) -> None:
    """Run the starting model on two training examples in eval mode (no RNG drawn, nothing
    changed): a dataset the backbone cannot take stops the run here, naming both, before
    anything is written."""
    split = data.splits["train"]
    name = plan.config.backbone.name if plan.config.init is None else f"the model of init.run ({plan.config.init.run})"
    was_training = model.training
    try:
        with kept_rng_state(), torch.no_grad():
            batch = device.move(next(iterate_batches(split, torch.arange(min(2, len(split))), 2)))
            model.eval()
            with device.autocast():
                logits = model(batch.x, index=batch.index)
    except SpurcoreError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure here means the two do not fit
        detail = (str(exc).strip().splitlines() or [""])[-1]
        raise RunError(f"backbone {name!r} cannot take the inputs of dataset {data.name!r} (input shape "
                       f"{data.input_shape or 'not declared'}): {type(exc).__name__}: {detail}") from None
    finally:
        model.train(was_training)
    for stage in plan.stages:
        if stage.spec.kind == "train" and stage.train.channels_last and len(data.input_shape) != 3:
            raise RunError(f"stages[{stage.index}].train.channels_last: a memory layout for images (channels, "
                           f"height, width); dataset {data.name!r} has inputs of shape "
                           f"{data.input_shape or 'not declared'}: set channels_last = false")
    if tuple(logits.shape) != (len(batch), data.n_classes):
        raise RunError(f"backbone {name!r} gives outputs of shape {tuple(logits.shape)} for {len(batch)} examples of "
                       f"dataset {data.name!r}; expected ({len(batch)}, {data.n_classes})")


def named(where: str, check: Callable[..., Any], *args: Any) -> Any:
    """Run a check (a plugin's); its error is prefixed with the key it concerns."""
    try:
        return check(*args)
    except SpurcoreError as error:
        raise type(error)(f"{where}: {error}") from None


_MISSING = "<missing>"


def first_difference(a: Any, b: Any, where: str = "") -> tuple[str, Any, Any] | None:
    """The first key path (`stages[0].options.p_gen`) at which two plain-data trees differ, with
    both values there; None when they are equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            found = first_difference(a.get(key, _MISSING), b.get(key, _MISSING), f"{where}.{key}" if where else str(key))
            if found is not None:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            found = first_difference(x, y, f"{where}[{i}]")
            if found is not None:
                return found
        return None
    return None if a == b else (where, a, b)
