"""Running a planned pipeline: the stages in order, each announced to the plugins, its epochs
or its head fitted (`spurcore.training`, `spurcore.posthoc`), its epoch selected and kept,
the run's record written (`spurcore.outputs`).

Everything that can be checked is checked before any work starts (`spurcore.planning`:
plugin names, options, labels each method and selector needs, the starting model, the run
directory), so a bad input stops the run before it writes anything. Each epoch ends with a
checkpoint; `resume=True` continues from the last one and reaches the same result as an
uninterrupted run.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from spurcore import atomic, config as cfg, distributed, portable, runlock
from spurcore.building import ModelBuilder, build_base_model, build_data, stage_context
from spurcore.context import Candidate, RunContext, StageContext
from spurcore.data import SpuriousData, content_digest, release_workers
from spurcore.device import Device, set_deterministic
from spurcore.evaluation import Evaluator
from spurcore.model import SpurModel
from spurcore.outputs import RunOutputs
from spurcore.planning import (Plan, RunError, check_init, check_labels, check_model, first_difference, named,
                               naming_the_file, plan)
from spurcore.plugins import PluginManager
from spurcore.posthoc import fit_head
from spurcore.rng import kept_rng_state
from spurcore.rundir import RunDir
from spurcore.training import train

class Runner:
    """Runs one planned pipeline into one run directory, announcing every event to `plugins`."""

    def __init__(self, plan: Plan, out: RunDir, plugins: PluginManager, *, device: Device,
                 data: SpuriousData, log: Callable[[str], None] = print, quiet: bool = False) -> None:
        self.plan = plan
        self.plugins = plugins
        self.hook = plugins.hook
        self.run = RunContext(plan=plan, data=data, device=device, out=out, plugins=plugins.view,
                              models=ModelBuilder(plan, plugins.view), log=log, quiet=quiet)
        self.evaluator = Evaluator(self.run, self.hook)
        self.outputs = RunOutputs(out)
        self._digest: str | None = None

    def _content_digest(self) -> str:
        """The run's data as derived caches key on it (`content_digest`), computed once per run."""
        if self._digest is None:
            self._digest = content_digest(self.run.data)
        return self._digest

    def execute(self, model: SpurModel) -> dict[str, Any]:
        """Run every stage from `model`, the model the pipeline starts from (`build_base_model`)."""
        run = self.run
        model = model.to(run.device.device)
        stage: StageContext | None = None
        results = []
        try:
            self.hook.spurcore_run_start(run=run)
            for planned in self.plan.stages:
                stage = stage_context(planned, model)
                self.plugins.register(stage.method, f"stage:{planned.key}", stage=True)
                try:
                    results.append(self._run_stage(stage))
                finally:
                    self.plugins.unregister(stage.method)
                model = stage.model
            stage = None
            summary = self.outputs.finish(results, run.config, run.log)
            self.hook.spurcore_run_end(run=run, summary=summary)
            return summary
        except BaseException as error:
            self.hook.spurcore_run_error(run=run, stage=stage, error=error)
            raise

    def _run_stage(self, stage: StageContext) -> dict[str, Any]:
        run, out = self.run, self.run.out
        finished = out.stage_result(stage.key) if run.resumed else None
        if finished is not None:
            self._prepare(stage)
            self._load_weights(stage, finished["selected"]["epoch"], finished["selected"].get("variant"))
            self.outputs.histories[stage.key] = finished["history"]
            return finished
        done = out.epochs(stage.key) if run.resumed else []
        if not done and out.stage_dir(stage.key).exists() and distributed.writes_files():
            shutil.rmtree(out.stage_dir(stage.key))  # leftovers of a stage cut before its first checkpoint
        stage.first_epoch = done[-1] + 1 if done and stage.spec.kind == "train" else 0 if stage.spec.fine_tunes else 1
        self.hook.spurcore_stage_start(run=run, stage=stage)
        if stage.spec.kind == "train":
            self._prepare(stage)
            history = train(run, stage, self.hook, self.evaluator, self.outputs,
                            score=lambda entry: self.plan.selector.score(self._candidate(stage, entry)))
        else:
            history = fit_head(run, stage, self.hook, self.evaluator, self.outputs, self._content_digest())
        self.outputs.histories[stage.key] = history
        selected, metrics = self._select(stage, history)
        self._load_weights(stage, selected["epoch"], selected.get("variant"))
        if stage.train.keep_checkpoints == "selected":
            for epoch in out.epochs(stage.key) if distributed.writes_files() else ():
                if epoch != selected["epoch"]:
                    out.checkpoint(stage.key, epoch).unlink()
        train_eval = self.evaluator.train_examples(stage)
        result = {
            "name": stage.name,
            "method": stage.spec.name,
            "kind": stage.spec.kind,
            "selected": selected,
            "metrics": metrics,
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
            stage.variants = self.hook.spurcore_inference_variants(run=self.run, stage=stage, model=stage.model)

    def _candidate(self, stage: StageContext, entry: dict[str, Any], variant: str | None = None) -> Candidate:
        epoch = entry["epoch"]
        metrics = entry["metrics"] if variant is None else entry["variants"][variant]
        return Candidate(stage=stage.key, epoch=epoch, metrics=self.plan.selector.visible(metrics), variant=variant,
                         load_model=lambda: self.run.models.load_model(self.run, stage.index, epoch, variant),
                         data=self.run.data)

    def _select(self, stage: StageContext, history: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The stage's `selected` record and the chosen candidate's metrics, among every (epoch,
        variant), ties to the earliest. The record holds the selector's score, and for a
        fine-tuning stage the best score of the model it started from (epoch 0)."""
        candidates = [(h, v) for h in history for v in (h.get("variants") or [None])]
        selector = self.plan.selector.name if stage.spec.kind == "train" else None
        if len(candidates) == 1:
            return {"selector": selector, "epoch": history[0]["epoch"]}, history[0]["metrics"]
        scores = [float(self.plan.selector.score(self._candidate(stage, h, v))) for h, v in candidates]
        best = int(np.argmax(scores))
        entry, variant = candidates[best]
        selected: dict[str, Any] = {"selector": selector, "epoch": entry["epoch"], "score": scores[best]}
        if variant is not None:
            selected["variant"] = variant
        if history[0]["epoch"] == 0 and stage.spec.kind == "train":
            selected["start_score"] = max(s for s, (h, _) in zip(scores, candidates) if h["epoch"] == 0)
        return selected, entry["metrics"] if variant is None else entry["variants"][variant]

    def _load_weights(self, stage: StageContext, epoch: int, variant: str | None = None) -> None:
        state = self.run.out.load_checkpoint(stage.key, epoch, map_location=self.run.device.device)
        stage.model.load_state_dict(state["model"])
        stage.use_variant(variant)


RESUME_MODES = (False, True, "auto")


def run_pipeline(config: cfg.PipelineConfig, out_path: Any, plugins: PluginManager, *,
                 resume: bool | str = False, log: Callable[[str], None] = print, quiet: bool = False) -> dict[str, Any]:
    """Validate everything, then run the pipeline into `out_path`.

    `resume=False` starts a run in a folder that holds none; `True` continues the run the folder
    holds (from its last checkpoint) and refuses a folder without one; `"auto"` does whichever
    applies (sweeps and scripts that relaunch). Everything that can fail is checked before the
    first file is written: names and options, the data, the model the pipeline starts from (run
    on one batch), each stage's and observer's checks (`spurcore_run_check`). While it runs, the
    run holds the folder's lock, so a second run into it stops with the holder's name. A new run
    that fails before its first checkpoint leaves the folder as it found it. `quiet` is
    `RunContext.quiet`: observers show no progress (`log` takes the notes).
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
        device = named("device", Device.from_config, config.device, config.amp)
        set_deterministic(config.deterministic)
        portable.apply_to_torch()
        distributed.setup(device.device)
        data = build_data(planned, plugins)
        check_labels(planned, data)
        model = build_base_model(planned, data, plugins).to(device.device)
        check_model(planned, data, model, device)
    with observing(planned, plugins):
        runner = Runner(planned, out, plugins, device=device, data=data, log=log, quiet=quiet)
        with kept_rng_state(), naming_the_file(config):
            models = runner.run.models.stage_models(runner.run, model)
            for stage in planned.stages:
                if stage.spec.check is not None:
                    named(f"stages[{stage.index}].options", stage.spec.check, stage.options, data, models[stage.key])
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
