"""spurcore-memorization: per-example memorization scores. Feldman's, estimated as Feldman &
Zhang (2020) do, from K models trained on random subsets of the training split; and four
cheaper estimates from one training run, recorded by the observer `dynamics`.

    spur memorization PIPELINE.toml --out DIR [--models 8] [--subset 0.7] [--epochs 5] [--seeds 0,1,2] [--jobs 2]
    spur memorization PIPELINE.toml --out DIR --estimator one-run [--curvature-every 5] [--seeds 0,1,2]

* `estimate`: `memorization(correct, trained)`, the estimate from two models x examples tables;
* `procedure`: the K models as trials of the sweep machinery (its launchers run them, a relaunch
  skips finished ones), and their predictions on the whole training split and on test;
* `options`, `observer`, `dynamics`, `curvature`: `[settings.dynamics]`, the observer that
  records every epoch's losses, correctness and input-loss curvature, the files it writes;
* `estimators`: the one-run scores from that record; `onerun`: one run per seed, scored;
* `outputs`: `scores.h5`, the per-group summaries, the figure;
* `scores`: `memorization_scores`, the whole procedure; `commands`: the command.
"""

from __future__ import annotations

from spurcore import hookimpl
from spurcore.api import ObserverSpec, SelectorSpec, lazy, lazy_exports
from spurcore_memorization.options import SETTINGS_KEY, DynamicsSettings

__all__ = ["DynamicsSettings", "Estimate", "Settings", "memorization", "memorization_scores", "one_run_scores",
           "read_dynamics", "read_scores"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "read_dynamics": "spurcore_memorization.dynamics:read_dynamics",
    "one_run_scores": "spurcore_memorization.onerun:one_run_scores",
    "Estimate": "spurcore_memorization.estimate:Estimate",
    "memorization": "spurcore_memorization.estimate:memorization",
    "Settings": "spurcore_memorization.procedure:Settings",
    "memorization_scores": "spurcore_memorization.scores:memorization_scores",
    "read_scores": "spurcore_memorization.outputs:read_scores",
})


def _epoch(candidate) -> float:
    return float(candidate.epoch)


@hookimpl
def spurcore_register_selectors():
    return [SelectorSpec(name="last-epoch", score=_epoch,
                         description="the last epoch, whatever its metrics (Feldman & Zhang score final models)")]


@hookimpl
def spurcore_register_observers():
    return [ObserverSpec(name=SETTINGS_KEY, settings=DynamicsSettings,
                         factory=lazy("spurcore_memorization.observer:observer"),
                         description="record each epoch's per-example training loss, correctness and input-loss "
                                     "curvature, for the one-run memorization estimates")]


@hookimpl
def spurcore_register_commands(cli):
    from spurcore_memorization.commands import memorization_cmd

    cli.add_command(memorization_cmd)
