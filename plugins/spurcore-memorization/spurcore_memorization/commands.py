"""`spur memorization`, added to the command line through `spurcore_register_commands`."""

from __future__ import annotations

from pathlib import Path

import click

from spurcore.api import plugin_manager
from spurcore_sweep import launcher_options, parse_seeds

SMALL = {"models": 8, "epochs": 5}
PAPER_MODELS = 2000  # as many as the authors' own MNIST example trains (heldout-influence-estimation)


@click.command("memorization")
@click.argument("pipeline", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output directory.")
@click.option("--models", type=int, help=f"Models per seed, K [{SMALL['models']}; {PAPER_MODELS} with --paper-scale].")
@click.option("--subset", type=float, default=0.7, show_default=True,
              help="Share of the training split each model trains on (a uniform draw per model).")
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
                     epochs: int | None, pipeline_epochs: bool, final_epoch: bool, paper_scale: bool, seeds: str,
                     launcher: str,
                     jobs: int, threads: int, address: str | None, launcher_option: tuple[str, ...]) -> None:
    """Per-example memorization scores (Feldman): train K models of PIPELINE's first training
    stage, each on a random --subset of the training split, and score every training example
    by the accuracy of the models that trained on it minus that of those that did not. A
    relaunch into --out skips finished models. Writes seedS/scores.h5, summary.json, scores.png."""
    from spurcore_memorization.procedure import Settings
    from spurcore_memorization.scores import memorization_scores

    if epochs is not None and pipeline_epochs:
        raise click.UsageError("--epochs and --pipeline-epochs: give one")
    if epochs is None and not (paper_scale or pipeline_epochs):
        epochs = SMALL["epochs"]
    models = models if models is not None else (PAPER_MODELS if paper_scale else SMALL["models"])
    manager = plugin_manager(ctx)
    settings = Settings(models=models, subset=subset, epochs=epochs, seeds=tuple(parse_seeds(seeds)),
                        final_epoch=final_epoch or paper_scale)
    result = memorization_scores(pipeline, out, manager, settings, launcher=launcher, jobs=jobs, threads=threads,
                                 address=address, launcher_option=launcher_option,
                                 plugin_args=tuple(ctx.find_root().obj["plugin_args"]), echo=click.echo)
    if result["failed"]:
        click.echo(f"{len(result['failed'])} model(s) failed or did not run; launch again to retry them", err=True)
        ctx.exit(1)
