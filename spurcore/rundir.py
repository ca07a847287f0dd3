"""A run directory: its layout, its checkpoints, and reading a finished run back.

    config.toml           the resolved pipeline
    metrics.jsonl         one line per (stage, epoch, split), train included when evaluated
    checkpoints/<i>-<stage>/epoch_NNN.pt    model, optimizer, scheduler, RNG states, history
    checkpoints/<i>-<stage>/result.json     written when the stage finishes
    summary.json, report.md, group_acc.png  written when the run finishes (summary.json last:
                          a folder with it holds a complete run)
    .lock                 held by the process writing the run (spurcore.runlock)
    origin.json           who launched the run and as what (a sweep's trial: its sweep, method,
                          settings and seed), written by the launcher before the run starts;
                          the kernel keeps it and never reads it, trackers do
    group_acc_epochs.png  train vs test accuracy per group over epochs (when train was
                          evaluated and has attribute labels), written when the run finishes
    trace/<tracer>/       what `spur trace --tracer NAME` writes there unless told `--out`

Checkpoints are written atomically and read with `weights_only=True`.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from spurcore import atomic, distributed
from spurcore.errors import SpurcoreError
from spurcore.runlock import LOCK_FILE

EPOCH_FILE = re.compile(r"epoch_(\d+)\.pt$")
ORIGIN_FILE = "origin.json"


class RunDirError(SpurcoreError):
    pass


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    config = property(lambda self: self.path / "config.toml")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    summary = property(lambda self: self.path / "summary.json")
    report = property(lambda self: self.path / "report.md")
    figure = property(lambda self: self.path / "group_acc.png")
    epochs_figure = property(lambda self: self.path / "group_acc_epochs.png")

    def other_files(self) -> list[str]:
        """What the folder holds besides its lock and leftover temporary files (sorted names)."""
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir()
                      if p.name not in (LOCK_FILE, ORIGIN_FILE) and not atomic.is_temporary(p))

    def remove_temporaries(self) -> None:
        """Delete the temporary files a killed writer left anywhere in the run (call holding the lock)."""
        for path in self.path.rglob(".*.tmp"):
            if path.is_file() and atomic.is_temporary(path):
                path.unlink(missing_ok=True)

    def has_checkpoints(self) -> bool:
        return any(self.path.glob("checkpoints/*/epoch_*.pt"))

    def clear(self) -> None:
        """Remove everything but the lock and the origin: for a new run that failed before it
        finished anything."""
        for path in self.path.iterdir() if self.path.is_dir() else ():
            if path.name in (LOCK_FILE, ORIGIN_FILE):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    @property
    def origin(self) -> Path:
        return self.path / ORIGIN_FILE

    def read_origin(self) -> dict[str, Any] | None:
        """`origin.json` as written by whoever launched the run, or None when there is none; an
        unreadable one is named."""
        try:
            origin = json.loads(self.origin.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise RunDirError(f"{self.origin}: not readable JSON ({exc})") from None
        if not isinstance(origin, dict):
            raise RunDirError(f"{self.origin}: expected a JSON object, got {type(origin).__name__}")
        return origin

    def trace_dir(self, tracer: str) -> Path:
        """The default output folder of the tracer called `tracer` on this run."""
        return self.path / "trace" / tracer

    def stage_dir(self, stage_key: str) -> Path:
        return self.path / "checkpoints" / stage_key

    def checkpoint(self, stage_key: str, epoch: int) -> Path:
        return self.stage_dir(stage_key) / f"epoch_{epoch:03d}.pt"

    def stage_result_path(self, stage_key: str) -> Path:
        return self.stage_dir(stage_key) / "result.json"

    def epochs(self, stage_key: str) -> list[int]:
        """Epochs that have a checkpoint, in order."""
        folder = self.stage_dir(stage_key)
        if not folder.is_dir():
            return []
        return sorted(int(m.group(1)) for p in folder.iterdir() if (m := EPOCH_FILE.match(p.name)))

    def save_checkpoint(self, stage_key: str, epoch: int, state: dict[str, Any]) -> None:
        with atomic.atomic_open(self.checkpoint(stage_key, epoch), "wb") as handle:
            torch.save(state, handle)
        distributed.barrier()  # rank 0 has written it: every rank may read it from here on

    def load_checkpoint(self, stage_key: str, epoch: int, map_location: Any = "cpu") -> dict[str, Any]:
        path = self.checkpoint(stage_key, epoch)
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except FileNotFoundError:
            raise RunDirError(f"{path}: no checkpoint for stage {stage_key!r} epoch {epoch}") from None
        except Exception as exc:
            raise RunDirError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from None

    def stage_result(self, stage_key: str) -> dict[str, Any] | None:
        path = self.stage_result_path(stage_key)
        return json.loads(path.read_text()) if path.exists() else None

    def write_stage_result(self, stage_key: str, result: dict[str, Any]) -> None:
        atomic.write_json(self.stage_result_path(stage_key), result)

    def read_summary(self) -> dict[str, Any]:
        try:
            return json.loads(self.summary.read_text())
        except FileNotFoundError:
            raise RunDirError(f"{self.path}: no summary.json; the run has not finished (spur run --resume continues it)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RunDirError(f"{self.summary}: not valid JSON ({exc}): the file is damaged; delete it, and "
                              f"`spur run --resume` (or relaunching the sweep) writes it again from the finished "
                              f"stages") from None
