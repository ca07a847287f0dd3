"""The pipeline observer: records chosen modules during the runner's evaluation passes.

Hooks are attached at `spurcore_evaluation_start` (for the chosen splits, epochs and stages
only; train like any split, on the examples its `train_eval` evaluates), rows are written at
`spurcore_evaluation_batch` from `batch.index`, `batch.y`, `batch.a`, and the hooks are
removed at `spurcore_evaluation_end`, or at `spurcore_run_error` when evaluation fails. The file is closed at run end or error. The forward hooks return
nothing and copy what they take, so the run computes exactly what it computes without them.

On `--resume`, rows of epochs the run will repeat (no checkpoint yet) are dropped and the
rest are copied into a fresh file, which recording then continues.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from spurcore import hookimpl
from spurcore.api import ConfigError, atomic, to_dict

from spurcore_activations.hooks import ActivationError, ModuleRecorder, resolve_modules
from spurcore_activations.options import SETTINGS_KEY, ActivationOptions
from spurcore_activations.reader import ActivationFile, _open
from spurcore_activations.schema import config_hash
from spurcore_activations.writer import ActivationWriter

WHERE = f"settings.{SETTINGS_KEY}"
COPY_BLOCK = 4096


def pipeline_hash(config: Any) -> str:
    """sha256 of the resolved pipeline, without the keys a resumed run may change."""
    data = {k: v for k, v in to_dict(config).items() if k not in ("device", "amp")}
    return config_hash(data)


def evaluated_splits(run: Any) -> list[str]:
    """The splits the runner evaluates: train when some stage's `train_eval` is not "none"."""
    trains = any(stage.train.train_eval != "none" for stage in run.plan.stages)
    return [s for s in run.data.splits if s != "train" or trains]


def holds_no_rows(path: Path) -> bool:
    """A file a kill left at creation: empty, not yet HDF5, or without a committed row."""
    if path.stat().st_size == 0:
        return True
    try:
        return len(ActivationFile(path)) == 0
    except (OSError, KeyError):  # not an HDF5 file yet, or its datasets not created
        return True


def check(run: Any, models: dict[str, Any], options: ActivationOptions) -> None:
    """Refuse settings that do not fit this run's data, stages or models, before it writes anything."""
    data = run.data
    evaluated = evaluated_splits(run)
    for i, split in enumerate(options.splits):
        if split == "train" and split not in evaluated:
            raise ConfigError(f"{WHERE}.splits[{i}]: no stage evaluates 'train' (train_eval = \"none\"); "
                              f"set [train] train_eval, or record it from the finished run with "
                              f"`spur activations RUN_DIR --split train`")
        if split not in evaluated:
            raise ConfigError(f"{WHERE}.splits[{i}]: {split!r} is not an evaluated split of dataset "
                              f"{data.name!r} ({', '.join(evaluated)})")
    labels = [s.label for s in run.config.stages]
    if options.stages != "all":
        for i, name in enumerate(options.stages):
            if name not in labels:
                raise ConfigError(f"{WHERE}.stages[{i}]: no stage named {name!r} (stages: {', '.join(labels)})")
    for key, model in models.items():
        if options.stages == "all" or key.split("-", 1)[1] in options.stages:
            try:
                resolve_modules(model, options.modules)
            except ActivationError as error:
                raise ConfigError(f"{WHERE}.modules: {error} (stage {key})") from None


class Recording:
    """The activation logging of one run."""

    def __init__(self, run: Any, options: ActivationOptions) -> None:
        self.run = run
        self.options = options
        data = run.data
        path = Path(options.path)
        self.path = path if path.is_absolute() else run.out.path / path
        self.hash = pipeline_hash(run.config)
        self.writer = ActivationWriter(
            self.path, splits=list(data.splits), class_names=data.class_names, attr_names=data.attr_names,
            attrs={"config_hash": self.hash, "source": "pipeline", "reduce": options.reduce,
                   "settings": to_dict(options)},
            compression=options.compression, rows_hint=run.config.train.eval_batch_size,
        )
        if self.path.exists() and run.resumed and holds_no_rows(self.path):
            self.path.unlink()  # left empty by a kill while it was created: nothing to keep
        if self.path.exists():
            if not run.resumed:
                raise ConfigError(f"{WHERE}.path: {self.path} already exists; remove it or choose another path")
            self._resume()
        self.recorder: ModuleRecorder | None = None
        self.where: tuple[int, int, str] | None = None
        self.checked: set[int] = set()

    # --- what to record ------------------------------------------------------------------------

    def wants(self, stage: Any, epoch: int, split: str) -> bool:
        o = self.options
        if split not in o.splits or (o.stages != "all" and stage.name not in o.stages):
            return False
        if o.epochs == "all":
            return True
        if o.epochs == "last":
            return stage.spec.kind != "train" or epoch == stage.train.epochs
        return epoch in o.epochs

    def check_modules(self, stage: Any) -> None:
        """Fail before a stage trains when a module name is unknown."""
        if stage.index not in self.checked:
            resolve_modules(stage.model, self.options.modules)
            self.checked.add(stage.index)

    # --- events --------------------------------------------------------------------------------

    def evaluation_start(self, stage: Any, epoch: int, split: str) -> None:
        self.detach()
        if self.wants(stage, epoch, split):
            self.recorder = ModuleRecorder(stage.model, self.options.modules, self.options.reduce).attach()
            self.where = (stage.index, epoch, split)

    def evaluation_batch(self, stage: Any, epoch: int, split: str, batch: Any) -> None:
        if self.recorder is None or self.where != (stage.index, epoch, split):
            return
        rows = self.recorder.take()
        shapes = {n: {"example_shape": list(s), "reduce": self.options.reduce} for n, s in self.recorder.shapes.items()}
        self.writer.append(rows, index=batch.index, y=batch.y, a=batch.a, split=split, epoch=epoch,
                           stage=stage.index, module_attrs=shapes)

    def detach(self) -> None:
        if self.recorder is not None:
            self.recorder.detach()
        self.recorder, self.where = None, None

    def close(self) -> None:
        try:
            self.detach()
        finally:
            self.writer.close()

    # --- resume --------------------------------------------------------------------------------

    def _resume(self) -> None:
        """Keep the rows of epochs that have a checkpoint (or of finished stages), drop the
        rest (the run evaluates them again), and continue in a fresh copy of the file."""
        old = ActivationFile(self.path)
        if old.config_hash != self.hash:
            raise ConfigError(f"{WHERE}.path: {self.path} was written by another pipeline (config hash differs); "
                              f"remove it or choose another path")
        out = self.run.out
        keys = {i: f"{i}-{s.label}" for i, s in enumerate(self.run.config.stages)}
        finished = {i for i, k in keys.items() if out.stage_result(k) is not None}
        done = {(i, e) for i, k in keys.items() for e in out.epochs(k)}
        kinds = {i: self.run.plugins.get("mitigations", s.method).kind for i, s in enumerate(self.run.config.stages)}
        raw = old.index()
        stage, epoch = raw["stage"].astype(np.int64), raw["epoch"].astype(np.int64)
        trained = np.array([kinds.get(int(s)) == "train" for s in range(int(stage.max(initial=0)) + 1)])
        pairs = np.array([s * 1_000_000 + e for s, e in done], dtype=np.int64)
        keep = np.isin(stage, list(finished)) | (trained[stage] & np.isin(stage * 1_000_000 + epoch, pairs))
        tmp = atomic.temporary_path(self.path)
        final, self.writer.path = self.path, tmp
        with _open(final) as f:
            modules = {m: int(f["modules"][m].shape[1]) for m in old.modules}
            attrs = {m: dict(f["modules"][m].attrs) for m in old.modules}
            self.writer.create(modules, attrs)
            index_ds = f["index"]
            rows = np.flatnonzero(keep)
            for lo in range(0, len(rows), COPY_BLOCK):
                block = rows[lo: lo + COPY_BLOCK]
                a, b = int(block[0]), int(block[-1]) + 1
                sel = keep[a:b]
                acts = {m: f["modules"][m][a:b][sel] for m in old.modules}
                self.writer.append_rows(acts, index_ds[a:b][sel])
        os.replace(tmp, final)
        self.writer.path = final


class ActivationObserver:
    """The observer of one run (`[settings.activations]`): checks the settings before the run
    writes anything, then records through the evaluation passes."""

    def __init__(self, options: ActivationOptions) -> None:
        self.options = options
        self.recording: Recording | None = None

    @hookimpl
    def spurcore_run_check(self, run, models):
        check(run, models, self.options)

    @hookimpl
    def spurcore_run_start(self, run):
        self.recording = Recording(run, self.options)

    @hookimpl
    def spurcore_epoch_start(self, stage):
        if self.recording is not None:
            self.recording.check_modules(stage)

    @hookimpl
    def spurcore_evaluation_start(self, stage, epoch, split):
        if self.recording is not None:
            self.recording.check_modules(stage)
            self.recording.evaluation_start(stage, epoch, split)

    @hookimpl
    def spurcore_evaluation_batch(self, stage, epoch, split, batch):
        if self.recording is not None:
            self.recording.evaluation_batch(stage, epoch, split, batch)

    @hookimpl
    def spurcore_evaluation_end(self):
        if self.recording is not None:
            self.recording.detach()

    @hookimpl
    def spurcore_run_end(self, run):
        recording = self.recording
        self.close()
        rows = recording.writer.rows if recording is not None else 0
        if rows:
            size = Path(recording.path).stat().st_size
            run.log(f"activations: {rows} rows in {recording.path} ({size / 2**20:.1f} MiB, "
                    f"{size / rows / 1024:.1f} KiB per row on disk)")

    @hookimpl
    def spurcore_run_error(self):
        self.close()

    def close(self) -> None:
        recording, self.recording = self.recording, None
        if recording is not None:
            recording.close()


def observer(options: ActivationOptions | None) -> ActivationObserver | None:
    """The `ObserverSpec.factory`: an observer when the pipeline has `[settings.activations]`."""
    return None if options is None else ActivationObserver(options)


__all__ = ["ActivationError", "ActivationObserver", "Recording", "check", "observer"]
