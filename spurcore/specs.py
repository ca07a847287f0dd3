"""The records that registration hooks yield: one frozen attrs class per kind of plugin.

A spec says what a plugin offers (a name, how to build it, which labels it needs); the
kernel gathers them from every plugin and refuses a name registered twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

KINDS = ("datasets", "backbones", "tracers", "mitigations", "selectors", "metrics", "observers", "launchers")

STAGE_KINDS = ("train", "posthoc")


def _name(instance: Any, attribute: attrs.Attribute, value: str) -> None:
    if not isinstance(value, str) or not value or value.strip() != value or " " in value:
        raise ValueError(f"{type(instance).__name__}.name must be a non-empty word, got {value!r}")


def _frozen_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return dict(value or {})


@attrs.frozen(kw_only=True)
class DatasetSpec:
    """A dataset: `build(options)` returns a `spurcore.data.SpuriousData`.

    `options` is an attrs class validated from the pipeline's `[dataset.options]`
    (None when the dataset takes none).
    """

    name: str = attrs.field(validator=_name)
    build: Callable[[Any], Any]
    options: type | None = None
    description: str = ""


@attrs.frozen(kw_only=True)
class BackboneSpec:
    """A feature extractor: `build(options, data)` returns a `spurcore.model.Backbone`.

    `data` is the `SpuriousData` it will be trained on (input shape, number of classes).
    """

    name: str = attrs.field(validator=_name)
    build: Callable[[Any, Any], Any]
    options: type | None = None
    description: str = ""


@attrs.frozen(kw_only=True)
class MitigationSpec:
    """A method that forms one stage of a pipeline.

    `kind` is "train" (the stage trains the model by epochs; the method's object shapes the
    model, the sampler and the loss) or "posthoc" (the stage fits a new head on frozen
    embeddings). `factory(options)` returns the stage object: a plugin whose hook
    implementations are registered for the duration of the stage only (its `state_dict()` /
    `load_state_dict()`, if it has them, are saved in and restored from every checkpoint).
    `needs_attributes` names the splits on which the method reads attribute labels
    (e.g. ("val",) for DFR), or is a function of the stage's options returning them; the
    kernel refuses to run the method on data without them.
    `train_defaults` overrides the pipeline's `[train]` settings for this stage unless the
    stage sets them itself (e.g. a fine-tuning stage with its own learning rate).
    `search_space` declares the options a sweep may draw: {option: [values]}.
    `fine_tunes` marks a train-kind method that continues a trained model (pruned-twin
    fine-tuning) rather than training from scratch: a comparison starts it, like a post-hoc
    method, from the baseline's trained run.
    `check(options, data, model)`, when given, refuses options that do not fit the data or the
    model the pipeline starts from (a split or module name), by raising a `SpurcoreError` that
    names the option; it runs before the run writes anything.
    """

    name: str = attrs.field(validator=_name)
    factory: Callable[[Any], object]
    kind: str = attrs.field(default="train", validator=attrs.validators.in_(STAGE_KINDS))
    options: type | None = None
    needs_attributes: tuple[str, ...] | Callable[[Any], tuple[str, ...]] = attrs.field(
        default=(), converter=lambda v: v if callable(v) else tuple(v)
    )
    train_defaults: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping)
    search_space: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping)
    fine_tunes: bool = False
    check: Callable[[Any, Any, Any], None] | None = None
    description: str = ""

    def attribute_splits(self, options: Any) -> tuple[str, ...]:
        """The splits whose attribute labels this method reads, with these options."""
        needs = self.needs_attributes
        return tuple(needs(options)) if callable(needs) else needs


@attrs.frozen(kw_only=True)
class SelectorSpec:
    """Chooses among candidate models: `score(candidate)` -> float, higher is better.

    Ties go to the earliest candidate. `needs_attributes` is True when the score reads
    attribute labels (validation worst-group accuracy does; worst-class accuracy does not).
    `metrics` names the metrics the score reads; a pipeline must compute them.
    `splits` names the splits whose metrics the score reads: a candidate carries those only,
    so a selector never sees training (or test) metrics it did not declare, and a pipeline
    whose data (or `train_eval = "none"`) lacks one is refused before it runs.
    """

    name: str = attrs.field(validator=_name)
    score: Callable[[Any], float]
    needs_attributes: bool = False
    metrics: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    splits: tuple[str, ...] = attrs.field(default=("val",), converter=tuple)
    description: str = ""

    def visible(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """The part of a candidate's metrics (split -> metrics) this selector may read."""
        return {split: metrics[split] for split in self.splits}


@attrs.frozen(kw_only=True)
class MetricSpec:
    """A metric: `compute(predictions)` -> {key: value} merged into a split's metrics.

    `predictions` is a `spurcore.evaluation.Predictions`. A metric that needs attribute
    labels is left out, with a note, on splits that have none.
    """

    name: str = attrs.field(validator=_name)
    compute: Callable[[Any], Mapping[str, Any]]
    needs_attributes: bool = False
    description: str = ""


@attrs.frozen(kw_only=True)
class TracerSpec:
    """A memorization tracer: `trace(run, options, out, log)` analyses a finished run and writes
    what it finds into the folder `out`.

    `spur trace RUN_DIR --tracer NAME` runs it: `run` is the `spurcore.finished.FinishedRun`
    that `spurcore.runner.open_run` returns (stages, epochs, data, `load_model(stage, epoch)`
    on the `--device` asked for); `options` an instance of `options` (an attrs class) validated
    from the command's `-o KEY=VALUE`s and flags, or None when the tracer takes none; `out`
    `--out`, by default `RUN_DIR/trace/NAME` (it may not exist yet); `log(line)` prints progress
    and is None under `--quiet` (show nothing while working, progress bars included). It returns
    a few lines for the user (what it found, what it wrote), which `spur trace` prints, under
    `--quiet` too. Tracers read a run's checkpoints and never change what the run computed.
    """

    name: str = attrs.field(validator=_name)
    trace: Callable[[Any, Any, Any, Any], str]
    options: type | None = None
    description: str = ""


@attrs.frozen(kw_only=True)
class ObserverSpec:
    """An observer: it listens to a run's lifecycle hooks and never changes what the run computes
    (progress display, activation logging, experiment trackers).

    `[settings.<name>]` configures it: the table is validated against `settings` (an attrs
    class) when the pipeline is planned, before data is built or any file written, and a
    settings table that names no observer is an error. For each run, `factory(settings)` (the
    validated settings, or None when the pipeline has no such table) returns the object that is
    registered as a plugin for that run only, or None when the observer has nothing to do.
    Its hook implementations receive the run's lifecycle events, `spurcore_run_check` first.
    """

    name: str = attrs.field(validator=_name)
    factory: Callable[[Any], object | None]
    settings: type | None = None
    description: str = ""


@attrs.frozen(kw_only=True)
class LauncherSpec:
    """Where a sweep runs its trials (this process, a process pool, Ray, a cluster scheduler).

    `factory(context)` returns the launcher a sweep hands its trials to; `context` is a
    `spurcore_sweep.LaunchContext` (`jobs`, `threads`, `address`, `options` from
    `--launcher-option`, the sweep's folder `out`, `plugins`). The launcher protocol (an integer
    `capacity`, `submit`, `wait`, `close`) is `spurcore-sweep`'s: `spurcore_sweep.Launcher`,
    docs/sweeps.md.
    """

    name: str = attrs.field(validator=_name)
    factory: Callable[[Any], Any]
    description: str = ""


SPEC_TYPES: Mapping[str, type] = {
    "datasets": DatasetSpec,
    "backbones": BackboneSpec,
    "tracers": TracerSpec,
    "mitigations": MitigationSpec,
    "selectors": SelectorSpec,
    "metrics": MetricSpec,
    "observers": ObserverSpec,
    "launchers": LauncherSpec,
}
