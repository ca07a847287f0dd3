"""spurcore-memorization: Feldman's per-example memorization scores, estimated as Feldman &
Zhang (2020) do, from K models trained on random subsets of the training split.

    spur memorization PIPELINE.toml --out DIR [--models 8] [--subset 0.7] [--epochs 5] [--seeds 0,1,2] [--jobs 2]

* `estimate`: `memorization(correct, trained)`, the estimate from two models x examples tables;
* `procedure`: the K models as trials of the sweep machinery (its launchers run them, a relaunch
  skips finished ones), and their predictions on the whole training split and on test;
* `outputs`: `scores.h5`, the per-group summaries, the figure;
* `scores`: `memorization_scores`, the whole procedure; `commands`: the command.
"""

from __future__ import annotations

from spurcore import hookimpl
from spurcore.api import SelectorSpec, lazy_exports

__all__ = ["Estimate", "Settings", "memorization", "memorization_scores", "read_scores"]
__getattr__, __dir__ = lazy_exports(__name__, {
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
def spurcore_register_commands(cli):
    from spurcore_memorization.commands import memorization_cmd

    cli.add_command(memorization_cmd)
