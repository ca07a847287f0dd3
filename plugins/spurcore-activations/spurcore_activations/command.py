"""`spur activations RUN_DIR --module M [--module M2] [--split S]... [--out FILE]`."""

from __future__ import annotations

from pathlib import Path

import click

from spurcore_activations.reduce import REDUCTIONS


@click.command("activations")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--module", "modules", multiple=True, required=True, metavar="NAME",
              help="A model.named_modules() path, e.g. embed.block2. Repeatable.")
@click.option("--split", "splits", multiple=True, metavar="SPLIT", help="Split to record (default: all). Repeatable.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Output file (default: RUN_DIR/activations/<stage>-epoch_<NNN>.h5).")
@click.option("--reduce", type=click.Choice(REDUCTIONS), default="mean", show_default=True,
              help="Conv maps per channel: mean, max, or none (flattened).")
@click.option("--device", default="cpu", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--stage", type=int, default=-1, show_default=True, help="Stage index (-1: the last).")
@click.option("--epoch", type=int, help="Epoch (default: the one the stage's selector chose).")
@click.option("--batch-size", type=int, help="Default: the stage's eval_batch_size.")
@click.option("--compression", type=click.Choice(["lzf", "gzip"]), default="lzf", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def activations_cmd(ctx: click.Context, run_dir: Path, modules: tuple[str, ...], splits: tuple[str, ...],
                    out: Path | None, reduce: str, device: str, stage: int, epoch: int | None,
                    batch_size: int | None, compression: str, quiet: bool) -> None:
    """Record the activations of MODULEs of a finished run's model to HDF5."""
    from spurcore.api import plugin_manager
    from spurcore_activations.extract import extract_run
    from spurcore_activations.reader import ActivationFile

    path = extract_run(run_dir, modules, splits=splits, out=out, reduce=reduce, device=device, stage=stage,
                       epoch=epoch, batch_size=batch_size, compression=compression,
                       plugins=plugin_manager(ctx), progress=not quiet)
    written = ActivationFile(path)
    units = ", ".join(f"{m} ({written.units[m]})" for m in written.modules)
    click.echo(f"wrote {len(written)} rows of {units} to {path}")
