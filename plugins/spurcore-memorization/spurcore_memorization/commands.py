"""`spur memorization`, added to the command line through `spurcore_register_commands`."""

from __future__ import annotations

from pathlib import Path

import click

from spurcore.api import plugin_manager
from spurcore_sweep import launcher_options, parse_seeds

SMALL = {"models": 8, "epochs": 5}
CURVATURE_EVERY = 5
FELDMAN_ZHANG_ONLY = ("models", "subset", "final_epoch", "paper_scale")
PAPER_MODELS = 2000  # as many as the authors' own MNIST example trains (heldout-influence-estimation)


@click.command("memorization")
@click.argument("pipeline", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output directory.")
@click.option("--models", type=int, help=f"Models per seed, K [{SMALL['models']}; {PAPER_MODELS} with --paper-scale].")
@click.option("--subset", type=float, default=0.7, show_default=True,
              help="Share of the training split each model trains on (a uniform draw per model).")
@click.option("--estimator", "estimators", multiple=True, default=("feldman-zhang",), show_default=True,
              help="feldman-zhang (K models), or one-run estimators from one run per seed, all from the same runs: "
                   "learning-time, cumulative-loss, forgetting, curvature, or one-run for the four (repeatable, "
                   "or a comma list).")
@click.option("--curvature-every", type=int,
              help=f"With --estimator curvature: measure it at epochs N, 2N, ... [{CURVATURE_EVERY}].")
@click.option("--epochs", type=click.IntRange(min=1),
              help=f"Epochs of every model [{SMALL['epochs']}; the pipeline's own with --paper-scale].")
@click.option("--pipeline-epochs", is_flag=True, help="Train every model for the pipeline's own epochs.")
@click.option("--final-epoch", is_flag=True,
              help="Score every model's last epoch (selector last-epoch), not the one the pipeline's selector picks.")
@click.option("--paper-scale", is_flag=True,
              help=f"Feldman & Zhang's protocol: {PAPER_MODELS} models per seed, the pipeline's epochs, "
                   f"each scored at its last epoch.")
@click.option("--seeds", default="0", show_default=True, help="Seeds of the whole procedure, e.g. 0,1,2.")
@launcher_options
@click.pass_context
def memorization_cmd(ctx: click.Context, pipeline: Path, out: Path, models: int | None, subset: float,
                     estimators: tuple[str, ...], curvature_every: int | None,
                     epochs: int | None, pipeline_epochs: bool, final_epoch: bool, paper_scale: bool, seeds: str,
                     launcher: str,
                     jobs: int, threads: int, address: str | None, launcher_option: tuple[str, ...]) -> None:
    """Per-example memorization scores. Feldman's (the default): train K models of PIPELINE's
    first training stage, each on a random --subset of the training split, and score every
    training example by the accuracy of the models that trained on it minus that of those that
    did not; writes seedS/scores.h5, summary.json, scores.png. One-run estimators (--estimator):
    one run per seed on the whole training split, recorded every epoch, scored by each
    estimator into ESTIMATOR/seedS/scores.h5, ESTIMATOR/summary.json, ESTIMATOR/scores.png.
    Higher scores mean more memorized, for every estimator. A relaunch into --out skips
    finished models and runs."""
    from spurcore_memorization.estimators import FELDMAN_ZHANG
    from spurcore_memorization.onerun import parse_estimators

    if epochs is not None and pipeline_epochs:
        raise click.UsageError("--epochs and --pipeline-epochs: give one")
    chosen = parse_estimators(estimators)
    if epochs is None and not (paper_scale or pipeline_epochs):
        epochs = SMALL["epochs"]
    common = {"launcher": launcher, "jobs": jobs, "threads": threads, "address": address,
              "launcher_option": launcher_option, "plugin_args": tuple(ctx.find_root().obj["plugin_args"]),
              "echo": click.echo}
    manager = plugin_manager(ctx)
    if FELDMAN_ZHANG in chosen:
        if len(chosen) > 1:
            raise click.UsageError("--estimator feldman-zhang trains K models on subsets, the others one run per seed "
                                   "on the whole split: launch them into two --out folders")
        if curvature_every is not None:
            raise click.UsageError("--curvature-every: only with --estimator curvature")
        from spurcore_memorization.procedure import Settings
        from spurcore_memorization.scores import memorization_scores

        models = models if models is not None else (PAPER_MODELS if paper_scale else SMALL["models"])
        settings = Settings(models=models, subset=subset, epochs=epochs, seeds=tuple(parse_seeds(seeds)),
                            final_epoch=final_epoch or paper_scale)
        failed = memorization_scores(pipeline, out, manager, settings, **common)["failed"]
    else:
        given = [name for name in FELDMAN_ZHANG_ONLY
                 if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT]
        if given:
            raise click.UsageError(f"--{given[0].replace('_', '-')}: a setting of --estimator feldman-zhang; the "
                                   f"one-run estimators train one model per seed on the whole training split")
        if curvature_every is not None and "curvature" not in chosen:
            raise click.UsageError("--curvature-every: only with --estimator curvature")
        from spurcore_memorization.onerun import OneRunSettings, one_run_scores

        settings = OneRunSettings(estimators=chosen, epochs=epochs, seeds=tuple(parse_seeds(seeds)),
                                  curvature_every=CURVATURE_EVERY if curvature_every is None else curvature_every)
        failed = one_run_scores(pipeline, out, manager, settings, **common)["failed"]
    if failed:
        click.echo(f"{len(failed)} model(s) failed or did not run; launch again to retry them", err=True)
        ctx.exit(1)
