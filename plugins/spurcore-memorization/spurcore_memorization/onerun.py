"""`one_run_scores`: the one-run estimators of `spur memorization --estimator`, from one run per
seed, all of them from the same runs.

Each seed's run (`DIR/runs/seedS`, pipeline seed S) is the pipeline's first training stage on
the whole training split, evaluating every training example after every epoch (`train_eval =
"full"`), recording them with `[settings.dynamics]` (the pipeline's own table, with
`curvature_every` set by the command), and keeping its last epoch (selector `last-epoch`).
The runs are trials of the sweep machinery, like Feldman-Zhang's models: `--jobs`, any
launcher, and a relaunch skips finished runs. Every estimator's scores then go where
Feldman-Zhang's would, one folder per estimator: `DIR/<estimator>/seedS/scores.h5` and
`scores.json`, `DIR/<estimator>/summary.json`, `summary.md` and `scores.png`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from spurcore.api import ConfigError, PluginManager, load_pipeline, open_run, predict
from spurcore_memorization.dynamics import Dynamics, DynamicsError, read_dynamics
from spurcore_memorization.estimators import ESTIMATORS, NAMES, ONE_RUN, Estimator
from spurcore_memorization.options import SETTINGS_KEY
from spurcore_memorization.outputs import SeedScores, write_seed, write_summary
from spurcore_memorization.procedure import (PIPELINE, MemorizationError, checked, first_stage, launch,
                                             save_launch, saved_device)
from spurcore_sweep import Trial

RUNS = "runs"
DIRECTION = "higher = more memorized"


@attrs.frozen(kw_only=True)
class OneRunSettings:
    """What a one-run launch asks for: the estimators, the epochs (None keeps the pipeline's),
    the seeds and how often the curvature is measured (used only when it is asked for)."""

    estimators: tuple[str, ...]
    epochs: int | None
    seeds: tuple[int, ...]
    curvature_every: int = 5

    def __attrs_post_init__(self) -> None:
        unknown = [name for name in self.estimators if name not in ESTIMATORS]
        if unknown or not self.estimators:
            raise ConfigError(f"--estimator {','.join(unknown)}: not a one-run estimator ({', '.join(ESTIMATORS)})")
        if self.curvature_every < 1:
            raise ConfigError(f"--curvature-every {self.curvature_every}: must be at least 1")
        if not self.seeds:
            raise ConfigError("--seeds: name at least one seed")

    @property
    def curvature(self) -> bool:
        return "curvature" in self.estimators


def run_path(seed: int) -> str:
    return f"{RUNS}/seed{seed}"


def resolve_pipeline(pipeline: Path, plugins: PluginManager, settings: OneRunSettings) -> dict[str, Any]:
    """The pipeline every seed runs, as plain data, checked against the installed plugins."""
    data, _ = first_stage(pipeline, plugins, settings.epochs)
    data["stages"][0]["train"]["train_eval"] = "full"
    data["selector"] = "last-epoch"
    tables = dict(data.get("settings") or {})
    tables[SETTINGS_KEY] = {**tables.get(SETTINGS_KEY, {}),
                            "curvature_every": settings.curvature_every if settings.curvature else 0}
    data["settings"] = tables
    resolved = checked(data, plugins)
    epochs = resolved["stages"][0]["train"].get("epochs", resolved["train"]["epochs"])
    if settings.curvature and settings.curvature_every > epochs:
        raise MemorizationError(f"--curvature-every {settings.curvature_every}: more than the {epochs} epochs each "
                                f"run trains; no epoch would be measured")
    return resolved


def one_run_scores(pipeline: Path, out: Path, plugins: PluginManager, settings: OneRunSettings, *,
                   launcher: str = "local", jobs: int = 1, threads: int = 1, address: str | None = None,
                   launcher_option: tuple[str, ...] = (), plugin_args: tuple[str, ...] = (),
                   echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or, on a relaunch, finish) every seed's run through `launcher`, then write every
    estimator's scores. Returns {"failed": [run paths], "summaries": {estimator: per group over
    seeds}} (no summaries when no run finished)."""
    import torch

    resolved = resolve_pipeline(pipeline, plugins, settings)
    epochs = resolved["stages"][0]["train"].get("epochs", resolved["train"]["epochs"])
    record = {"pipeline": str(pipeline), "estimators": list(settings.estimators), "epochs": epochs,
              "selector": "last-epoch", "seeds": list(settings.seeds), "run_seed": "seed",
              "settings": resolved["settings"][SETTINGS_KEY]}
    trials = tuple(Trial(method="one-run", settings={}, seed=s, path=run_path(s), overrides=(f"seed={s}",))
                   for s in settings.seeds)
    sweep = save_launch(out, resolved, record, trials, plugin_args=plugin_args, threads=threads)
    launched = launch(sweep, plugins, launcher=launcher, jobs=jobs, threads=threads, address=address,
                      launcher_option=launcher_option, out=out, echo=echo)
    torch.set_num_threads(threads)
    stage_key = f"0-{load_pipeline(out / PIPELINE).stages[0].label}"
    finished = [s for s in settings.seeds if run_path(s) not in launched["failed"]]
    for seed in sorted(set(settings.seeds) - set(finished)):
        echo(f"seed {seed}: no scores, its run did not finish ({out / run_path(seed)})")
    per_seed: dict[str, dict[int, Any]] = {name: {} for name in settings.estimators}
    memorization: dict[str, dict[int, np.ndarray]] = {name: {} for name in settings.estimators}
    costs: dict[str, dict[int, Any]] = {name: {} for name in settings.estimators}
    data = None
    for seed in finished:
        run = open_run(out / run_path(seed), plugins, device=saved_device(out))
        data = run.data
        dynamics = read_dynamics(run.path, stage_key)
        test = predict(run.load_model(0, "selected"), data.splits["test"], run.device).argmax(1)
        for name in settings.estimators:
            estimator = ESTIMATORS[name]
            found = score(estimator, dynamics, run.path, test == data.splits["test"].y, seed)
            costs[name][seed] = dynamics.cost(curvature=estimator.reads == "curvature")
            per_seed[name][seed] = write_seed(out / name / f"seed{seed}", data, found,
                                              {"estimator": name, "direction": DIRECTION, "epochs": epochs,
                                               "curvature_epochs": dynamics.curvature_epochs.tolist(),
                                               "cost": costs[name][seed]}, thresholds=())
            memorization[name][seed] = found.memorization
        echo(f"seed {seed}: {', '.join(str(out / name / f'seed{seed}' / 'scores.h5') for name in settings.estimators)}")
    if data is None:
        return {"failed": launched["failed"], "summaries": {}}
    summaries = {}
    for name in settings.estimators:
        estimator = ESTIMATORS[name]
        summaries[name], text = write_summary(
            out / name, data, per_seed[name], memorization[name],
            {"estimator": name, "direction": DIRECTION, "paper": estimator.paper, "epochs": epochs,
             "cost": {str(seed): cost for seed, cost in costs[name].items()}, "launch": launched["cost"]},
            f"{pipeline.name}: {name}, one run per seed, {epochs} epochs, "
            f"seed{'s' if len(finished) > 1 else ''} {', '.join(map(str, finished))}",
            score_label=estimator.label, limits=None, number=".4g")
        echo(f"{name}:\n{text}")
    return {"failed": launched["failed"], "summaries": summaries}


def score(estimator: Estimator, dynamics: Dynamics, run: Path, test_correct: np.ndarray, seed: int) -> SeedScores:
    """One estimator's scores of one run: per training example (NaN where the record has none),
    the last epoch's training accuracy as "trained on", the last model's test accuracy."""
    table = dynamics.table(estimator.reads)
    if not len(table):
        raise DynamicsError(f"{run}: no curvature recorded ([settings.{SETTINGS_KEY}] curvature_every = 0); "
                            f"relaunch with --estimator curvature into a new --out")
    return SeedScores(memorization=dynamics.spread(estimator.score(table)),
                      accuracies={"accuracy_in": dynamics.spread(dynamics.correct[-1].astype(float))},
                      test_accuracy=test_correct.astype(float),
                      train={estimator.reads: np.stack([dynamics.spread(row) for row in table])},
                      attributes={"estimator": estimator.name, "direction": DIRECTION, "seed": seed,
                                  "epochs": dynamics.epochs})


def parse_estimators(values: Sequence[str]) -> tuple[str, ...]:
    """`--estimator` values (repeatable, comma lists, `one-run` for the four) as names, in
    order, each once; an unknown name is an error with the closest one."""
    names: list[str] = []
    for value in values:
        for name in (part.strip() for part in value.split(",")):
            if name == ONE_RUN:
                names += list(ESTIMATORS)
            elif name in NAMES:
                names.append(name)
            else:
                close = difflib.get_close_matches(name, [*NAMES, ONE_RUN], n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ConfigError(f"--estimator {name!r}: unknown ({hint}choose from {', '.join([*NAMES, ONE_RUN])})")
    return tuple(dict.fromkeys(names))
