"""The per-epoch record of a run's training split, which the one-run estimators read.

`[settings.dynamics]` makes a run write, for every epoch of every training stage, the file
`RUN/dynamics/<stage key>/epoch_NNN.npz` (atomically, at the end of the epoch's evaluation of
the training split, before the epoch's checkpoint): the positions evaluated, each one's
cross-entropy and whether it was classified right, the input-loss curvature at the epochs it is
measured at, and the seconds the epoch took (of which the curvature's) and its torch threads.
One file per epoch is what makes a resumed run safe: the epochs it repeats (those without a checkpoint) are written again, over
the same names, and the others are kept as they are.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import attrs
import numpy as np

from spurcore.api import SpurcoreError, atomic

FOLDER = "dynamics"
EPOCH_FILE = re.compile(r"^epoch_(\d{3,})\.npz$")
ARRAYS = ("positions", "loss", "correct", "examples", "seconds", "curvature_seconds", "threads")  # + "curvature"


class DynamicsError(SpurcoreError):
    pass


def stage_folder(run: Path, stage_key: str) -> Path:
    return Path(run) / FOLDER / stage_key


def write_epoch(run: Path, stage_key: str, epoch: int, arrays: Mapping[str, np.ndarray]) -> Path:
    path = stage_folder(run, stage_key) / f"epoch_{epoch:03d}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_open(path, "wb") as handle:
        np.savez(handle, **arrays)
    return path


@attrs.frozen(kw_only=True)
class Dynamics:
    """A stage's record, epochs 1..E: `positions` (the training positions evaluated, of
    `examples`), `loss` and `correct` (epochs x positions), `curvature` (`curvature_epochs` x
    positions; empty when never measured), `seconds` (of which `curvature_seconds`) and
    `threads` per epoch."""

    epochs: np.ndarray
    positions: np.ndarray
    examples: int
    loss: np.ndarray
    correct: np.ndarray
    curvature_epochs: np.ndarray
    curvature: np.ndarray
    seconds: np.ndarray
    curvature_seconds: np.ndarray
    threads: np.ndarray

    def table(self, reads: str) -> np.ndarray:
        """The epochs x positions table an estimator reads ("loss", "correct" or "curvature")."""
        return getattr(self, reads)

    def spread(self, values: np.ndarray) -> np.ndarray:
        """Per-position values as one per training example, NaN where none was evaluated
        (`train_eval = "subset:N"`)."""
        out = np.full(self.examples, np.nan)
        out[self.positions] = values
        return out

    def cost(self, curvature: bool) -> dict[str, float]:
        """What the record cost, with or without its curvature passes: wall seconds and CPU
        minutes (seconds times torch threads, an upper bound), over the epochs."""
        seconds = self.seconds if curvature else self.seconds - self.curvature_seconds
        return {"seconds": round(float(seconds.sum()), 1), "threads": int(self.threads.max()),
                "cpu_minutes": round(float((seconds * self.threads).sum() / 60), 3)}


def read_dynamics(run: Path, stage_key: str) -> Dynamics:
    """The record of stage `stage_key` of the run in `run`, epochs 1 to the last recorded, or a
    DynamicsError naming the folder or file that is missing or does not fit."""
    folder = stage_folder(run, stage_key)
    found = sorted((int(m.group(1)), p) for p in folder.glob("epoch_*.npz") if (m := EPOCH_FILE.match(p.name))) \
        if folder.is_dir() else []
    if not found:
        raise DynamicsError(f"{folder}: no recorded epochs; run the pipeline with [settings.dynamics] "
                            f"(docs/methods/memorization-estimators.md)")
    epochs = [e for e, _ in found]
    if epochs != list(range(1, len(epochs) + 1)):
        missing = sorted(set(range(1, epochs[-1] + 1)) - set(epochs))
        raise DynamicsError(f"{folder}: epochs {missing} are not recorded (found {epochs[0]} to {epochs[-1]})")
    rows = [_read(path) for _, path in found]
    first = rows[0]
    for (epoch, path), row in zip(found, rows):
        if not np.array_equal(row["positions"], first["positions"]) or int(row["examples"]) != int(first["examples"]):
            raise DynamicsError(f"{path}: other training positions than epoch 1's; was the run's train_eval changed?")
    measured = [(e, row["curvature"]) for e, row in zip(epochs, rows) if "curvature" in row]
    width = len(first["positions"])
    return Dynamics(epochs=np.array(epochs), positions=first["positions"], examples=int(first["examples"]),
                    loss=np.stack([r["loss"] for r in rows]).astype(float),
                    correct=np.stack([r["correct"] for r in rows]),
                    curvature_epochs=np.array([e for e, _ in measured], dtype=int),
                    curvature=np.stack([c for _, c in measured]).astype(float) if measured else np.empty((0, width)),
                    seconds=np.array([float(r["seconds"]) for r in rows]),
                    curvature_seconds=np.array([float(r["curvature_seconds"]) for r in rows]),
                    threads=np.array([int(r["threads"]) for r in rows]))


def _read(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as handle:  # allow_pickle=False: an object array is refused, not unpickled
            missing = [name for name in ARRAYS if name not in handle.files]
            if missing:
                raise DynamicsError(f"{path}: no array {missing[0]!r}")
            row = {name: handle[name] for name in handle.files}
    except DynamicsError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever numpy and zipfile make of a damaged file
        raise DynamicsError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
    width = len(row["positions"])
    for name in ("loss", "correct", *(("curvature",) if "curvature" in row else ())):
        if row[name].shape != (width,):
            raise DynamicsError(f"{path}: {name!r} has shape {row[name].shape}, not one value per position ({width})")
    return row
