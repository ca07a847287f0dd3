"""`spur gradcam RUN_DIR`: Grad-CAM maps of the baseline and the fine-tuned model (`gradcam.py`),
added through spurcore_register_commands; the maps' code, and torch, load when it runs."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("gradcam")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--baseline-stage", type=int, default=0, show_default=True, help="Stage index of the baseline (ERM).")
@click.option("--stage", type=int, default=-1, show_default=True, help="Stage index of the fine-tuned model.")
@click.option("--baseline-run", type=click.Path(path_type=Path),
              help="Take the baseline from this run's final model (for runs that started via [init]).")
@click.option("--layer", help="Module path of the layer (a conv map, or a transformer's tokens) "
                              "[the backbone's last block; a transformer's last but one].")
@click.option("--per-group", type=click.IntRange(min=1), default=3, show_default=True, help="Test images per group.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the image choice.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Figure file [RUN_DIR/gradcam.png].")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.pass_context
def gradcam_cmd(ctx, run_dir, baseline_stage, stage, baseline_run, layer, per_group, seed, out, device):
    """Grad-CAM maps of a few test images per group, baseline next to fine-tuned, as one figure."""
    from spurcore.api import plugin_manager
    from spurcore_prunedtwin.gradcam import gradcam_figure

    result = gradcam_figure(run_dir, plugin_manager(ctx), baseline_stage=baseline_stage, stage=stage,
                            baseline_run=baseline_run, layer=layer, per_group=per_group, seed=seed,
                            out=out, device=device)
    counts = ", ".join(f"{label} {n}/{result['images']} correct" for label, n in result["correct"].items())
    click.echo(f"wrote {result['figure']} (layer {result['layer']}; {counts})")
