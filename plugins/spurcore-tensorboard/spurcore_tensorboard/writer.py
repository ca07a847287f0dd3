"""The TensorBoard backend of `spurcore_tracking.Tracker`: event files in `<run>/<logdir>`.

A resumed run reads the event files already there (tensorboard's own `EventAccumulator`) to
learn which steps they hold, and opens its writer with `purge_step` at the first step still to
log: TensorBoard then hides whatever an earlier process wrote from that step on, and the run
logs those steps again from its records, so no step appears twice. Every entry is flushed
when written, so a killed run loses at most the entry it was writing.

Hyperparameters (the resolved config, and a sweep trial's method, settings and seed) go to
the HPARAMS dashboard with the `final/...` scalars as its metrics, when the run finishes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from spurcore.api import writes_files
from spurcore_tracking import Entry, Identity, Tracker

from spurcore_tensorboard.options import SETTINGS_KEY, TensorBoardSettings

EVENT_FILES = "events.out.tfevents.*"


def held_steps(logdir: Path) -> dict[str, set[int]]:
    """Scalar tag -> the steps the event files in `logdir` hold (after TensorBoard's purges)."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    accumulator = EventAccumulator(str(logdir), size_guidance={SCALARS: 0})
    accumulator.Reload()
    return {tag: {event.step for event in accumulator.Scalars(tag)} for tag in accumulator.Tags()[SCALARS]}


class TensorBoardRun:
    def __init__(self, run: Any, settings: TensorBoardSettings, identity: Identity) -> None:
        self.logdir = run.out.path / settings.logdir
        self.identity = identity
        self.config_text = run.out.config.read_text() if run.out.config.exists() else ""
        self.existing = any(self.logdir.glob(EVENT_FILES))
        self.held = held_steps(self.logdir) if self.existing else {}
        self.writer: Any = None
        self.hyperparameters: dict[str, Any] = {}

    def logged(self, key: str) -> set[int]:
        """What the event files held before this process (up to the purge), and what it wrote."""
        return set(self.held.get(key, set()))

    def begin(self, resume_at: int | None, hyperparameters: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        purge = resume_at if self.existing else None
        if purge is not None:
            self.held = {key: {s for s in steps if s < purge} for key, steps in self.held.items()}
        self.writer = SummaryWriter(str(self.logdir), purge_step=purge)
        self.hyperparameters = {**self.identity.tags, **hyperparameters}
        if not self.existing:
            self.writer.add_text("config", _code(self.config_text, "toml"), 0)
            self.writer.flush()

    def log(self, entry: Entry) -> None:
        for key, value in entry.scalars.items():
            self.writer.add_scalar(key, value, entry.step)
        self.writer.flush()
        self.held.setdefault(entry.marker, set()).add(entry.step)

    def finish(self, entry: Entry, files: list[Path]) -> None:
        from PIL import Image
        from torch.utils.tensorboard.summary import hparams

        for path in files:
            if path.suffix == ".png":
                with Image.open(path) as image:
                    pixels = np.asarray(image.convert("RGB"))
                self.writer.add_image(f"figures/{path.stem}", pixels, entry.step, dataformats="HWC")
            elif path.suffix == ".json":
                self.writer.add_text(path.stem, _code(json.dumps(json.loads(path.read_text()), indent=2), "json"),
                                     entry.step)
            elif path.suffix == ".md":
                self.writer.add_text(path.stem, path.read_text(), entry.step)
        metrics = {key: value for key, value in entry.scalars.items() if key != entry.marker}
        for summary in hparams(self.hyperparameters, metrics):
            self.writer.file_writer.add_summary(summary)
        self.log(entry)

    def close(self, status: str) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _code(text: str, language: str) -> str:
    """Text as a fenced block: TensorBoard renders text as Markdown."""
    return f"```{language}\n{text}\n```"


def observer(settings: TensorBoardSettings | None) -> Tracker | None:
    """The `ObserverSpec.factory`: a tracker when the pipeline has `[settings.tensorboard]`,
    in the process that writes the run's files."""
    if settings is None or not writes_files():
        return None
    return Tracker(SETTINGS_KEY, settings, TensorBoardRun)
