"""A clock on a `spur` run's phases, for the scale benchmark's breakdown of what a step's time
is made of: an observer plugin, loaded with `spur -p phase_clock ...` (this folder on
PYTHONPATH), that appends one JSON line per lifecycle event to the file named by
`$SPURCORE_PHASE_CLOCK` (with the process id, so trial processes can share the file).
It only reads the clock: what the run computes is unchanged.

`phases(path, started, ended)` turns the events into seconds per phase: before the run
(starting the process, planning, building the dataset), training (each epoch from its start to
its first evaluation, the epoch-start work of a method included), evaluation, post-hoc fitting
(a post-hoc stage from its start to its evaluation: extracting the embeddings and the fit),
and the rest (checkpoints, reports, figures, what a command does outside a run).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from spurcore import hookimpl

ENV = "SPURCORE_PHASE_CLOCK"


def _note(event: str, **fields) -> None:
    path = os.environ.get(ENV)
    if path:
        with open(path, "a") as handle:
            handle.write(json.dumps({"event": event, "t": time.time(), "pid": os.getpid(), **fields}) + "\n")


@hookimpl
def spurcore_run_start(run):
    _note("run_start")


@hookimpl
def spurcore_run_end(run, summary):
    _note("run_end")


@hookimpl
def spurcore_stage_start(run, stage):
    _note("stage_start", kind=stage.spec.kind)


@hookimpl
def spurcore_epoch_start(run, stage, epoch):
    _note("epoch_start")


@hookimpl
def spurcore_evaluation_start(run, stage, epoch, split):
    _note("evaluation_start")


@hookimpl
def spurcore_evaluation_end(run, stage, epoch, split, metrics):
    _note("evaluation_end")


PHASES = ("before the run", "training", "evaluation", "post-hoc fit", "the rest")


def phases(path: Path, started: float, ended: float) -> dict[str, float]:
    """Seconds per phase of the events in `path`, for a command run from `started` to `ended`
    (time.time()); the phases add up to the command's wall time."""
    out = dict.fromkeys(PHASES, 0.0)
    try:
        events = [json.loads(line) for line in Path(path).read_text().splitlines()]
    except FileNotFoundError:
        events = []
    by_process: dict[int, list[dict]] = {}
    for event in events:
        by_process.setdefault(event["pid"], []).append(event)
    first_start = min((e["t"] for e in events if e["event"] == "run_start"), default=ended)
    out["before the run"] = first_start - started
    for process in by_process.values():
        opened, kind = None, None
        for event in process:
            name = event["event"]
            if name == "stage_start":
                kind, opened = event["kind"], (event["t"] if event["kind"] == "posthoc" else None)
            elif name == "epoch_start":
                opened = event["t"]
            elif name == "evaluation_start":
                if opened is not None:
                    out["post-hoc fit" if kind == "posthoc" else "training"] += event["t"] - opened
                    opened = None
                evaluation = event["t"]
            elif name == "evaluation_end":
                out["evaluation"] += event["t"] - evaluation
    out["the rest"] = (ended - started) - sum(v for k, v in out.items() if k != "the rest")
    return {k: round(v, 1) for k, v in out.items()}
