"""`spur trace RUN_DIR`: the tracer on the command line (added through spurcore_register_commands)."""

from __future__ import annotations

from pathlib import Path

import click



def _list(kind):
    def parse(ctx, param, value):
        if value is None:
            return None
        try:
            return [kind(v.strip()) for v in value.split(",") if v.strip()]
        except ValueError:
            raise click.BadParameter(f"expected a comma-separated list, got {value!r}") from None
    return parse


def _epoch(ctx, param, value):
    if value in (None, "last", "selected"):
        return value
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"expected 'last', 'selected' or an epoch number, got {value!r}") from None


def add_command(cli: click.Group) -> None:
    if "trace" in cli.commands:
        return

    @cli.command("trace")
    @click.argument("run_dir", type=click.Path(path_type=Path))
    @click.option("--stage", type=int, default=-1, show_default=True, help="Stage index (-1: the last).")
    @click.option("--epoch", callback=_epoch, default="last", show_default=True,
                  help="Epoch to trace: 'last', 'selected' (the selector's choice) or a number.")
    @click.option("--criterion", "criteria", callback=_list(str), help="gradient,magnitude,loss-gradient [gradient,magnitude].")
    @click.option("--k", "ks", callback=_list(int), help="Top-k values [1,2,3].")
    @click.option("--intervention", "interventions", callback=_list(str), help="zero,init,noise [all three].")
    @click.option("--sigma", "sigmas", callback=_list(float), help="Std of init/noise draws [0.005].")
    @click.option("--repeats", type=int, help="Repeats of random interventions and controls [2; the paper: 10].")
    @click.option("--subset", type=click.Choice(["lowest-confidence", "all"]), help="D_j for the per-group gradient.")
    @click.option("--subset-size", type=int, help="N lowest-confidence examples per group [200].")
    @click.option("--per-layer-k", callback=_list(int), help="k for per-layer tracing, '' to skip [3].")
    @click.option("--rewind", "rewind_offsets", callback=_list(int), help="Epoch offsets to rewind [5,10,20,30,40], '' to skip.")
    @click.option("--no-control", is_flag=True, help="Skip the random non-critical control.")
    @click.option("--exclude", callback=_list(str), help="Module paths not to trace, e.g. head.")
    @click.option("--seed", type=int, help="Seed of random interventions and controls [0].")
    @click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Output folder [RUN_DIR/trace].")
    @click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
    @click.option("--quiet", is_flag=True, help="No progress bar.")
    @click.pass_context
    def trace_cmd(ctx, run_dir, stage, epoch, criteria, ks, interventions, sigmas, repeats, subset, subset_size,
                  per_layer_k, rewind_offsets, no_control, exclude, seed, out, device, quiet):
        """Trace where the model of RUN_DIR memorizes its minority groups: score neurons, change
        the top ones, measure every group's accuracy on train and test; writes trace.json and figures."""
        from spurcore.cli import plugin_manager
        from spurcore.config import structure
        from spurcore_tracer.trace import TraceOptions, trace

        given = {"stage": stage, "epoch": epoch, "criteria": criteria, "k": ks, "interventions": interventions,
                 "sigma": sigmas, "repeats": repeats, "subset": subset, "subset_size": subset_size,
                 "per_layer_k": per_layer_k, "rewind_offsets": rewind_offsets, "exclude": exclude,
                 "seed": seed, "device": device}
        if no_control:
            given["control"] = False
        options = structure(TraceOptions, {k: v for k, v in given.items() if v is not None}, "spur trace")
        out = out or run_dir / "trace"
        result = trace(run_dir, options, out=out, plugins=plugin_manager(ctx), progress=not quiet, log=click.echo)
        for row in result["summary"]:
            if row["scope"] != "global":
                continue
            sigma = "" if row["sigma"] is None else f" sigma={row['sigma']}"
            click.echo(f"{row['criterion']:<14} {row['intervention']:<8}{sigma:<13} {row['split']:<5} "
                       f"|change| minority {row['minority_abs']:6.2f}  majority {row['majority_abs']:6.2f} points")
        click.echo(f"wrote {out / 'trace.json'} and {', '.join(result.get('figures', []))} "
                   f"({result['cost']['evaluations']} evaluations, {result['cost']['seconds']} s)")
