"""Test helpers for tracker plugins: runs cut where a crash or a kill would cut them, and the
numbers a run's `metrics.jsonl` holds, to compare what a tracker logged against."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spurcore import hookimpl
from spurcore.api import run_pipeline

__all__ = ["Interrupt", "interrupted", "recorded"]


class Interrupt:
    """A plugin that stops a run at `epoch`: `during="evaluation"` in the test split's
    evaluation (the epoch has no checkpoint: the resumed run trains it again), or
    `during="epoch_end"` before any observer hears of the finished epoch (it is checkpointed and
    recorded, not logged: as if killed just after its checkpoint)."""

    def __init__(self, epoch: int, during: str = "evaluation") -> None:
        self.epoch, self.during = epoch, during

    @hookimpl
    def spurcore_evaluation_batch(self, epoch, split):
        if self.during == "evaluation" and epoch == self.epoch and split == "test":
            raise KeyboardInterrupt

    @hookimpl(tryfirst=True)
    def spurcore_epoch_end(self, epoch):
        if self.during == "epoch_end" and epoch == self.epoch:
            raise KeyboardInterrupt


def interrupted(config: Any, out: Path, plugins: Any, interrupt: Interrupt) -> None:
    """Run `config` into `out` until `interrupt` stops it."""
    plugins.register(interrupt, "interrupt")
    try:
        run_pipeline(config, out, plugins, log=lambda message: None)
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError(f"the run into {out} was not interrupted")
    finally:
        plugins.unregister(interrupt)


def recorded(run_dir: Path) -> dict[tuple[str, int, str], dict[str, Any]]:
    """(stage, epoch, split) -> that row of the run's `metrics.jsonl`."""
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {(row["stage"], row["epoch"], row["split"]): row for row in rows}
