"""The runner: validates a pipeline, then runs its stages and announces every event.

Everything that can be checked is checked before any work starts (plugin names, options,
labels each method and selector needs, the run directory), so a bad input stops the run
before it writes anything. Each epoch ends with a checkpoint; `resume=True` continues from
the last one and reaches the same result as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import json
import random
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from torch import nn

from spurcore import atomic, config as cfg, distributed, portable, runlock
from spurcore.context import Candidate, RunContext, StageContext
from spurcore.data import SpuriousData, content_digest, hold_out, iterate_batches, keep_train_subset, release_workers
from spurcore.device import Device, set_deterministic
from spurcore.embeddings import cached
from spurcore.errors import SpurcoreError
from spurcore.evaluation import TrainEvaluation, evaluate, evaluation_splits, train_evaluation
from spurcore.finished import FinishedRun
from spurcore.lazy import Lazy
from spurcore.model import SpurModel, build_model
from spurcore.plugins import PluginError, PluginManager, Registry, manager_of
from spurcore.rundir import RunDir
from spurcore.specs import MitigationSpec, ObserverSpec, SelectorSpec


FINITE_CHECK_STEPS = 32  # how often training reads back whether its loss is still finite (a GPU sync)


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


def plan(config: cfg.PipelineConfig, plugins: PluginManager | Registry) -> Plan:
    """Resolve every name and validate every option, or raise naming the file and the key
    (`plugins`: a manager, or a hook's `run.plugins`)."""
    with naming_the_file(config):
        return _plan(config, manager_of(plugins))


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


def _get(plugins: PluginManager, kind: str, name: str, key: str) -> Any:
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


def _plan(config: cfg.PipelineConfig, plugins: PluginManager) -> Plan:
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


def _observers(config: cfg.PipelineConfig, plugins: PluginManager) -> tuple[tuple[ObserverSpec, Any], ...]:
    """Every observer with its `[settings.<name>]` validated (None without a table); a table
    that names no observer is an error with the closest name."""
    specs = {name: entry.spec for name, entry in plugins.registry("observers").items()}
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, stage: int, epoch: int) -> int:
    """The data-order seed of one epoch: fixed by (seed, stage, epoch), so resume matches."""
    return (seed * 1_000_003 + stage * 10_007 + epoch) % 2**63


def build_data(plan: Plan, plugins: PluginManager) -> SpuriousData:
    """The dataset, its training split cut to `[dataset] train_subset`, then `holdout` of what
    is left moved to a split of its own."""
    spec = plugins.get("datasets", plan.config.dataset.name)
    data = spec.build(plan.dataset_options)
    if not isinstance(data, SpuriousData):
        raise RunError(f"dataset {spec.name!r} built {type(data).__name__}, not spurcore.data.SpuriousData")
    kept = keep_train_subset(data, plan.config.dataset.train_subset, plan.config.seed)
    return hold_out(kept, plan.config.dataset.holdout, plan.config.seed)


def build_base_model(plan: Plan, data: SpuriousData, plugins: PluginManager) -> SpurModel:
    """A fresh backbone and head, or the model `[init]` names, seeded by the pipeline's seed."""
    init = plan.config.init
    if init is None:
        seed_everything(plan.config.seed)
        spec = plugins.get("backbones", plan.config.backbone.name)
        return build_model(spec.build(plan.backbone_options, data), data.n_classes)
    model = open_run(init.run, plugins).load_model(init.stage, "selected" if init.epoch < 0 else init.epoch)
    if model.head.out_features != data.n_classes:
        raise RunError(f"init.run: {init.run} predicts {model.head.out_features} classes; "
                       f"dataset {data.name!r} has {data.n_classes}")
    seed_everything(plan.config.seed)
    return model.cpu()


class Runner:
    """Runs one planned pipeline into one run directory."""

    def __init__(self, plan: Plan, out: RunDir, plugins: PluginManager, *, device: Device,
                 data: SpuriousData, resume: bool = False, log: Callable[[str], None] = print) -> None:
        self.plan = plan
        self.plugins = plugins
        self.hook = plugins.hook
        self.run = RunContext(config=plan.config, data=data, device=device, out=out,
                              plugins=Registry(plugins), initial_model=self._initial_model, resumed=resume, log=log)
        self.histories: dict[str, list[dict[str, Any]]] = {}
        self.train_evaluations: dict[str, TrainEvaluation | None] = {}
        self._digest: str | None = None

    def _content_digest(self) -> str:
        """The run's data as derived caches key on it (`content_digest`), computed once per run."""
        if self._digest is None:
            self._digest = content_digest(self.run.data)
        return self._digest

    def _initial_model(self) -> SpurModel:
        with kept_rng_state():  # building seeds every RNG; the run's own streams go on untouched
            return build_base_model(self.plan, self.run.data, self.plugins).to(self.run.device.device)

    # --- the whole run -------------------------------------------------------------------------

    def execute(self, model: SpurModel) -> dict[str, Any]:
        """Run every stage from `model`, the model the pipeline starts from (`build_base_model`)."""
        run = self.run
        model = model.to(run.device.device)
        stage_ctx: StageContext | None = None
        results = []
        try:
            self.hook.spurcore_run_start(run=run)
            for planned in self.plan.stages:
                stage_ctx = self._stage_context(planned, model)
                self.plugins.register(stage_ctx.method, f"stage:{planned.key}")
                try:
                    results.append(self._run_stage(stage_ctx))
                finally:
                    self.plugins.unregister(stage_ctx.method)
                model = stage_ctx.model
            stage_ctx = None
            summary = self._summary(results)
            self._write_outputs(summary, results)
            self.hook.spurcore_run_end(run=run, summary=summary)
            return summary
        except BaseException as error:
            self.hook.spurcore_run_error(run=run, stage=stage_ctx, error=error)
            raise

    def stage_models(self, model: SpurModel) -> dict[str, SpurModel]:
        """Each stage's model as it starts training, by stage key: `spurcore_prepare_model`
        replayed, stage after stage, on copies of `model` (which stays untouched), so a layer
        that cannot be inserted, or a module name that will not exist, is found before the run
        writes anything."""
        models = {}
        for planned in self.plan.stages:
            ctx = self._stage_context(planned, copy.deepcopy(model))
            self._replay_prepare(ctx)
            models[planned.key] = model = ctx.model
        return models

    def _replay_prepare(self, ctx: StageContext) -> None:
        """`spurcore_prepare_model` of this stage's object alone (not of a stage that is running,
        nor of observers), on a model being rebuilt or checked."""
        if ctx.spec.kind != "train":
            return
        self.plugins.register(ctx.method, f"replay:{ctx.key}")
        try:
            others = [p for p in self.plugins.pm.get_plugins() if p is not ctx.method]
            caller = self.plugins.pm.subset_hook_caller("spurcore_prepare_model", remove_plugins=others)
            caller(run=self.run, stage=ctx, model=ctx.model)
            ctx.model.to(self.run.device.device)
        finally:
            self.plugins.unregister(ctx.method)

    def _stage_context(self, planned: PlannedStage, model: SpurModel) -> StageContext:
        return StageContext(index=planned.index, config=planned.config, spec=planned.spec,
                            options=planned.options, train=planned.train,
                            method=planned.spec.factory(planned.options), model=model)

    def _run_stage(self, stage: StageContext) -> dict[str, Any]:
        run, out = self.run, self.run.out
        finished = out.stage_result(stage.key) if run.resumed else None
        if finished is not None:
            self._prepare(stage)
            self._load_weights(stage, finished["selected"]["epoch"])
            self.histories[stage.key] = finished["history"]
            return finished
        done = out.epochs(stage.key) if run.resumed else []
        if not done and out.stage_dir(stage.key).exists() and distributed.writes_files():
            shutil.rmtree(out.stage_dir(stage.key))  # leftovers of a stage cut before its first checkpoint
        stage.first_epoch = done[-1] + 1 if done and stage.spec.kind == "train" else 1
        self.hook.spurcore_stage_start(run=run, stage=stage)
        if stage.spec.kind == "train":
            self._prepare(stage)
            history = self._train(stage)
        else:
            history = self._posthoc(stage)
        self.histories[stage.key] = history
        selected = self._select(stage, history)
        self._load_weights(stage, selected)
        if stage.train.keep_checkpoints == "selected":
            for epoch in out.epochs(stage.key) if distributed.writes_files() else ():
                if epoch != selected:
                    out.checkpoint(stage.key, epoch).unlink()
        entry = next(h for h in history if h["epoch"] == selected)
        train_eval = self._train_evaluation(stage)
        result = {
            "name": stage.name,
            "method": stage.spec.name,
            "kind": stage.spec.kind,
            "selected": {"selector": self.plan.selector.name if stage.spec.kind == "train" else None, "epoch": selected},
            "metrics": entry["metrics"],
            "train_eval": None if train_eval is None else train_eval.record(),
            "history": history,
        }
        out.write_stage_result(stage.key, result)
        self.hook.spurcore_stage_end(run=run, stage=stage, result=result)
        return result

    def _prepare(self, stage: StageContext) -> None:
        if stage.spec.kind == "train":
            self.hook.spurcore_prepare_model(run=self.run, stage=stage, model=stage.model)
            stage.model.to(self.run.device.device)

    # --- training stages -----------------------------------------------------------------------

    def _train(self, stage: StageContext) -> list[dict[str, Any]]:
        run, out, train = self.run, self.run.out, stage.train
        model = stage.model
        stage.optimizer = make_optimizer(train, model.parameters())
        stage.scheduler = make_scheduler(train, stage.optimizer)
        scaler = run.device.grad_scaler()
        history: list[dict[str, Any]] = []
        if stage.first_epoch > 1:
            state = out.load_checkpoint(stage.key, stage.first_epoch - 1)
            model.load_state_dict(state["model"])
            stage.optimizer.load_state_dict(state["optimizer"])
            if stage.scheduler is not None:
                stage.scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            if hasattr(stage.method, "load_state_dict"):
                stage.method.load_state_dict(state.get("method", {}))
            set_rng_state(state["rng"])
            history = list(state["history"])
        split = run.data.splits["train"]
        fast_layout(model, train)
        for epoch in range(len(history) + 1, train.epochs + 1):
            model.train()
            self.hook.spurcore_epoch_start(run=run, stage=stage, epoch=epoch)
            generator = torch.Generator().manual_seed(epoch_seed(run.config.seed, stage.index, epoch))
            order = self.hook.spurcore_train_sampler(run=run, stage=stage, epoch=epoch, generator=generator)
            if order is None:
                order = torch.randperm(len(split), generator=generator)
            elif len(order) == 0:
                raise RunError(f"stages[{stage.index}]: method {stage.spec.name!r} returned an empty training order")
            total = torch.zeros((), device=run.device.device)
            seen = torch.zeros((), device=run.device.device)
            first_bad = torch.full((), -1, device=run.device.device)  # the first step whose loss is not finite
            order, sizes, weights = distributed.shard(torch.as_tensor(order), train.batch_size)
            batches = iterate_batches(split, order, sizes, augment=True, **run.device.loader_options(train.num_workers))
            for step, batch in enumerate(batches):
                batch = run.device.move(batch, channels_last=train.channels_last)
                weight = 1.0 if weights is None else weights[step]
                with run.device.autocast():
                    loss = self.hook.spurcore_train_loss(run=run, stage=stage, model=model, batch=batch)
                if not isinstance(loss, torch.Tensor):
                    raise RunError(f"stages[{stage.index}]: no spurcore_train_loss implementation returned a loss for "
                                   f"stage {stage.key!r} (got {type(loss).__name__}); a method's loss hook must return "
                                   f"a scalar tensor")
                stage.optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss * weight if weights else loss).backward()
                if weights:
                    distributed.average_gradients(model.parameters())
                scaler.step(stage.optimizer)
                scaler.update()
                total += loss.detach() * len(batch) * (weight > 0)
                seen += len(batch) * (weight > 0)
                first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), step, first_bad)
                if step % FINITE_CHECK_STEPS == FINITE_CHECK_STEPS - 1:
                    self._check_finite(stage, epoch, first_bad)
                self.hook.spurcore_batch_end(run=run, stage=stage, epoch=epoch, step=step, batch=batch, loss=loss)
            self._check_finite(stage, epoch, first_bad)
            metrics = self._evaluate(stage, epoch)
            entry = {"epoch": epoch, "train_loss": float(distributed.total(total)) / max(float(distributed.total(seen)), 1),
                     "metrics": metrics}
            history.append(entry)
            self._step_scheduler(stage, entry)
            out.save_checkpoint(stage.key, epoch, {
                "model": model.state_dict(),
                "optimizer": stage.optimizer.state_dict(),
                "scheduler": stage.scheduler.state_dict() if stage.scheduler is not None else {},
                "scaler": scaler.state_dict(),
                "method": stage.method.state_dict() if hasattr(stage.method, "state_dict") else {},
                "rng": get_rng_state(),
                "history": history,
            })
            self._write_metrics(stage.key, history)
            self.hook.spurcore_epoch_end(run=run, stage=stage, epoch=epoch,
                                         metrics={**metrics, "train_loss": entry["train_loss"]})
        return history

    def _check_finite(self, stage: StageContext, epoch: int, first_bad: torch.Tensor) -> None:
        """Stop the stage once its loss has stopped being a number (`first_bad`: the first such
        step of this epoch, -1 while none), before the epoch's checkpoint: the folder keeps the
        epochs before it. Every process of a data-parallel run stops together."""
        if float(distributed.total((first_bad >= 0).float())) == 0:
            return
        step = int(first_bad)
        where = f"step {step}" if step >= 0 else "a step of another process"
        kept = self.run.out.epochs(stage.key)
        resume = (f"the folder keeps the checkpoints of epochs {kept[0]} to {kept[-1]} (spur run --resume continues "
                  f"from there)" if kept else "no checkpoint of this stage was written")
        raise RunError(f"stages[{stage.index}] ({stage.key}), epoch {epoch}, {where}: the training loss is not a "
                       f"finite number; the weights diverged (lower train.lr, check the data for extreme values); "
                       f"{resume}")

    def _train_evaluation(self, stage: StageContext) -> TrainEvaluation | None:
        """The training examples this stage evaluates, drawn once per setting (same seed)."""
        setting = stage.train.train_eval
        if setting not in self.train_evaluations:
            self.train_evaluations[setting] = train_evaluation(setting, self.run.data, self.run.config.seed)
        return self.train_evaluations[setting]

    def _evaluate(self, stage: StageContext, epoch: int) -> dict[str, dict[str, Any]]:
        """Metrics per split: train first (per `train_eval`), then val, test and any extra split.
        The train pass leaves every RNG as it found it (a DataLoader draws its base seed), so
        training is the same whatever `train_eval` says."""
        metrics = {}
        train = self._train_evaluation(stage)
        if train is not None:
            with kept_rng_state():
                metrics["train"] = evaluate(self.run, stage, epoch, "train", train.positions)
        for split in evaluation_splits(self.run):
            metrics[split] = evaluate(self.run, stage, epoch, split)
        return metrics

    def _step_scheduler(self, stage: StageContext, entry: dict[str, Any]) -> None:
        if stage.scheduler is None:
            return
        if isinstance(stage.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            stage.scheduler.step(self.plan.selector.score(self._candidate(stage, entry)))
        else:
            stage.scheduler.step()

    # --- post-hoc stages -----------------------------------------------------------------------

    def _posthoc(self, stage: StageContext) -> list[dict[str, Any]]:
        run, model = self.run, stage.model
        trained_here = any(s.spec.kind == "train" for s in self.plan.stages[: stage.index])
        source = self.plan.config.init
        own = run.out.path / "embeddings"
        origin = own if trained_here or source is None else Path(source.run) / "embeddings"
        found = cached(model, run.data, run.device, cfg.to_dict(self.plan.config.dataset), write_to=origin,
                       look_in=(own,), batch_size=stage.train.eval_batch_size, content=self._content_digest())
        for note in found.notes:
            run.log(f"stage {stage.key}: {note}")
        run.log(f"stage {stage.key}: embeddings {'reused from' if found.reused else 'extracted to'} {found.path} "
                f"({found.describe()})")
        embeddings = found.embeddings
        head = self.hook.spurcore_posthoc_head(run=run, stage=stage, model=model, embeddings=embeddings)
        expected = (model.feature_dim, run.data.n_classes)
        if not isinstance(head, nn.Linear) or (head.in_features, head.out_features) != expected:
            raise RunError(
                f"stages[{stage.index}]: method {stage.spec.name!r} must return nn.Linear"
                f"{expected} from spurcore_posthoc_head, got {head!r}"
            )
        model.head = head.to(run.device.device)
        metrics = self._evaluate(stage, 0)
        run.out.save_checkpoint(stage.key, 0, {"model": model.state_dict(), "history": [], "rng": get_rng_state()})
        history = [{"epoch": 0, "train_loss": None, "metrics": metrics}]
        self._write_metrics(stage.key, history)
        return history

    # --- selection and outputs ------------------------------------------------------------------

    def _candidate(self, stage: StageContext, entry: dict[str, Any]) -> Candidate:
        epoch = entry["epoch"]
        return Candidate(stage=stage.key, epoch=epoch, metrics=self.plan.selector.visible(entry["metrics"]),
                         load_model=lambda: self.load_model(stage.index, epoch), data=self.run.data)

    def load_model(self, stage_index: int = -1, epoch: int | None = None) -> SpurModel:
        """Rebuild the model of one stage (default: the last) at one epoch (default: the one
        its selector chose) from this run's checkpoints, replaying `spurcore_prepare_model`."""
        planned_stages = self.plan.stages[: stage_index % len(self.plan.stages) + 1]
        target = planned_stages[-1]
        if epoch is None:
            result = self.run.out.stage_result(target.key)
            if result is None:
                raise RunError(f"{self.run.out.path}: stage {target.key!r} has not finished; name an epoch")
            epoch = result["selected"]["epoch"]
        model = self._initial_model()
        for planned in planned_stages:
            self._replay_prepare(self._stage_context(planned, model))
        model.load_state_dict(self.run.out.load_checkpoint(target.key, epoch)["model"])
        return model.to(self.run.device.device).eval()

    def _select(self, stage: StageContext, history: list[dict[str, Any]]) -> int:
        if len(history) == 1:
            return history[0]["epoch"]
        scores = [float(self.plan.selector.score(self._candidate(stage, h))) for h in history]
        return history[int(np.argmax(scores))]["epoch"]

    def _load_weights(self, stage: StageContext, epoch: int) -> None:
        state = self.run.out.load_checkpoint(stage.key, epoch, map_location=self.run.device.device)
        stage.model.load_state_dict(state["model"])

    def _write_metrics(self, key: str, history: list[dict[str, Any]]) -> None:
        self.histories[key] = history
        lines = []
        for stage_key, entries in self.histories.items():
            for entry in entries:
                for split, metrics in entry["metrics"].items():
                    row = {"stage": stage_key, "epoch": entry["epoch"], "split": split,
                           "train_loss": entry["train_loss"], **metrics}
                    lines.append(_json_line(row))
        atomic.write_text(self.run.out.metrics, "".join(lines))

    def _summary(self, results: list[dict[str, Any]]) -> dict[str, Any]:
        final = results[-1]
        chosen = next((r for r in reversed(results) if r["selected"]["selector"] is not None), final)
        return {
            "metrics": {s: final["metrics"][s] for s in ("train", "val", "test") if s in final["metrics"]},
            "selected": {"selector": chosen["selected"]["selector"], "stage": chosen["name"], "epoch": chosen["selected"]["epoch"]},
            "stages": [
                {"name": r["name"], "method": r["method"], "kind": r["kind"], "selected": r["selected"],
                 "metrics": r["metrics"], "train_eval": r.get("train_eval")}
                for r in results
            ],
        }

    def _write_outputs(self, summary: dict[str, Any], results: list[dict[str, Any]]) -> None:
        from spurcore import report

        atomic.write_text(self.run.out.report, report.markdown(summary, self.plan.config))
        report.plot_group_acc(summary, self.run.out.figure)
        if not report.plot_group_acc_epochs(results, self.run.out.epochs_figure):
            self.run.log("no train evaluation with attribute labels: group_acc_epochs.png not written")
        atomic.write_json(self.run.out.summary, summary)  # last: a run with summary.json is complete


def fast_layout(model: SpurModel, train: cfg.TrainConfig) -> None:
    """`[train] channels_last`: the model's weights in NHWC layout (batches follow in
    `Device.move`); `[train] compile`: the model compiled in place by `torch.compile` (its
    state dict keeps its keys, so checkpoints load into an uncompiled model)."""
    if train.channels_last:
        model.to(memory_format=torch.channels_last)
    if train.compile:
        model.compile()


def make_optimizer(train: cfg.TrainConfig, params: Any) -> torch.optim.Optimizer:
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    return torch.optim.Adam(params, lr=train.lr, weight_decay=train.weight_decay)


def make_scheduler(train: cfg.TrainConfig, optimizer: torch.optim.Optimizer) -> Any:
    if train.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=train.epochs)
    if train.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=1)
    return None


def get_rng_state() -> dict[str, Any]:
    """Every RNG the training step may draw from, as tensors (loadable with weights_only)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": torch.tensor(random.getstate()[1], dtype=torch.int64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(int(v) for v in state["python"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def kept_rng_state() -> Iterator[None]:
    """Run a block that may draw from the global RNGs, then put every RNG back exactly as it
    was (numpy's cached Gaussian included)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(state[0])
        np.random.set_state(state[1])
        random.setstate(state[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _json_line(row: dict[str, Any]) -> str:
    return json.dumps(row) + "\n"


RESUME_MODES = (False, True, "auto")


def run_pipeline(config: cfg.PipelineConfig, out_path: Any, plugins: PluginManager, *,
                 resume: bool | str = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Validate everything, then run the pipeline into `out_path`.

    `resume=False` starts a run in a folder that holds none; `True` continues the run the folder
    holds (from its last checkpoint) and refuses a folder without one; `"auto"` does whichever
    applies (sweeps and scripts that relaunch). Everything that can fail is checked before the
    first file is written: names and options, the data, the model the pipeline starts from (run
    on one batch), each stage's and observer's checks (`spurcore_run_check`). While it runs, the
    run holds the folder's lock, so a second run into it stops with the holder's name. A new run
    that fails before its first checkpoint leaves the folder as it found it.
    """
    if resume not in RESUME_MODES:
        raise ValueError(f"resume must be one of {RESUME_MODES}, got {resume!r}")
    planned = plan(config, plugins)
    out = RunDir(out_path)
    resolved = cfg.to_dict(config)
    _folder_state(out, resume, resolved)
    if distributed.writes_files():
        atomic.check_writable(out.path)
    with naming_the_file(config):
        check_init(planned, plugins)
        device = _named("device", Device.from_config, config.device, config.amp)
        set_deterministic(config.deterministic)
        portable.apply_to_torch()
        distributed.setup(device.device)
        data = build_data(planned, plugins)
        check_labels(planned, data)
        model = build_base_model(planned, data, plugins).to(device.device)
        check_model(planned, data, model, device)
    with observing(planned, plugins):
        runner = Runner(planned, out, plugins, device=device, data=data, log=log)
        with kept_rng_state(), naming_the_file(config):
            models = runner.stage_models(model)
            for stage in planned.stages:
                if stage.spec.check is not None:
                    _named(f"stages[{stage.index}].options", stage.spec.check, stage.options, data, models[stage.key])
            plugins.hook.spurcore_run_check(run=runner.run, models=models)
        with runlock.locked(out.path) if distributed.writes_files() else contextlib.nullcontext():
            resumed = _folder_state(out, resume, resolved)  # again, now that no one else can write here
            if distributed.writes_files():
                out.remove_temporaries()
            distributed.barrier()  # every process has checked the run directory before rank 0 writes to it
            runner.run.resumed = resumed
            if not resumed:
                atomic.write_text(out.config, cfg.dumps(config))
            try:
                return runner.execute(model)
            except BaseException:
                if not resumed and not out.has_checkpoints() and distributed.writes_files():
                    out.clear()  # nothing finished: leave the folder as this run found it
                raise
            finally:
                release_workers(data)  # the loaders' kept workers end with the run, not later


def _folder_state(out: RunDir, resume: bool | str, resolved: dict[str, Any]) -> bool:
    """Whether the run continues the one in `out` (True) or starts one there (False); refuse a
    folder that does not fit `resume`."""
    if out.config.exists():
        if resume is False:
            raise RunError(f"{out.path} already holds a run: pass --resume to continue it, or choose another --out")
        _check_same_pipeline(out, resolved)
        return True
    if resume is True:
        raise RunError(f"{out.path} holds no run to resume (no config.toml): check the path, or drop --resume "
                       f"to start a run there")
    if out.other_files():
        raise RunError(f"{out.path} is not empty and holds no run ({', '.join(out.other_files()[:3])}); "
                       f"choose another --out")
    return False


def check_init(plan: Plan, plugins: PluginManager) -> None:
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


def _named(where: str, check: Callable[..., Any], *args: Any) -> Any:
    """Run a check (a plugin's); its error is prefixed with the key it concerns."""
    try:
        return check(*args)
    except SpurcoreError as error:
        raise type(error)(f"{where}: {error}") from None


@contextlib.contextmanager
def observing(plan: Plan, plugins: PluginManager) -> Iterator[None]:
    """Register each observer's object for one run, and unregister it after, whatever happens."""
    registered = []
    try:
        for spec, settings in plan.observers:
            observer = spec.factory(settings)
            if observer is not None:
                plugins.register(observer, f"observer:{spec.name}")
                registered.append(observer)
        yield
    finally:
        for observer in reversed(registered):
            plugins.unregister(observer)


def plan_saved(run_dir: Any, plugins: PluginManager, overrides: Sequence[str] = ()) -> Plan:
    """The plan of the pipeline a run directory saved, for reading the run back: its observers'
    settings are left out, since reading a run needs none of the observers that watched it."""
    config = cfg.load_pipeline(RunDir(run_dir).config, overrides)
    return plan(attrs.evolve(config, settings={}), plugins)


def open_run(path: Any, plugins: PluginManager | Registry, *, device: str = "cpu") -> FinishedRun:
    """A finished (or interrupted) run, read back for analysis: `open_run(p, pm).load_model()`
    (see `spurcore.finished.FinishedRun`); a hook passes its `run.plugins`."""
    plugins = manager_of(plugins)
    out = RunDir(path)
    if not out.config.exists():
        raise RunError(f"{out.path}: not a run directory (no config.toml)")
    planned = plan_saved(out.path, plugins, [f"device={json.dumps(device)}"])
    config = planned.config
    return FinishedRun(Runner(planned, out, plugins, device=Device.from_config(config.device, config.amp),
                              data=build_data(planned, plugins), resume=True, log=lambda message: None))


RESUMABLE_DIFFERENCES = ("device", "amp")


def _check_same_pipeline(out: RunDir, resolved: dict[str, Any]) -> None:
    """Compare after filling defaults, so runs saved before a new key existed still resume; a
    difference is named by its first differing key."""
    saved = cfg.to_dict(cfg.load_pipeline(out.config))
    for key in RESUMABLE_DIFFERENCES:
        saved.pop(key, None)
    difference = first_difference(saved, {k: v for k, v in resolved.items() if k not in RESUMABLE_DIFFERENCES})
    if difference is not None:
        key, was, now = difference
        raise RunError(f"{out.config}: the saved pipeline differs from this one at {key} (saved {was!r}, now "
                       f"{now!r}); resume with the same pipeline or choose another --out")


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
