"""`spur trace RUN_DIR [--tracer NAME]`: any registered tracer on the command line (added through
spurcore_register_commands). The run is opened once, here, and handed to the tracer's
`TracerSpec.trace` with its options: `-o KEY=VALUE` for any tracer, and flags named after the
memorization tracer's options, which are the default tracer's, for any tracer that has them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import click

from spurcore_tracer.options import NAME


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


# flags whose destination is an option name of the tracer (the memorization tracer's, by default)
OPTION_FLAGS = (
    click.Option(["--stage", "stage"], type=int, help="Stage index, -1: the last [-1]."),
    click.Option(["--epoch", "epoch"], callback=_epoch,
                 help="Epoch to trace: 'last', 'selected' (the selector's choice) or a number [last]."),
    click.Option(["--criterion", "criteria"], callback=_list(str),
                 help="gradient,magnitude,loss-gradient [gradient,magnitude]."),
    click.Option(["--k", "k"], callback=_list(int), help="Top-k values [1,2,3]."),
    click.Option(["--intervention", "interventions"], callback=_list(str), help="zero,init,noise [all three]."),
    click.Option(["--sigma", "sigma"], callback=_list(float), help="Std of init/noise draws [0.005]."),
    click.Option(["--repeats", "repeats"], type=int, help="Repeats of random interventions and controls [2; the paper: 10]."),
    click.Option(["--subset", "subset"], type=click.Choice(["lowest-confidence", "all"]), help="D_j for the per-group gradient."),
    click.Option(["--subset-size", "subset_size"], type=int, help="N lowest-confidence examples per group [200]."),
    click.Option(["--per-layer-k", "per_layer_k"], callback=_list(int), help="k for per-layer tracing, '' to skip [3]."),
    click.Option(["--rewind", "rewind_offsets"], callback=_list(int),
                 help="Epoch offsets to rewind [5,10,20,30,40], '' to skip."),
    click.Option(["--no-control", "control"], flag_value=False, default=None, help="Skip the random non-critical control."),
    click.Option(["--exclude", "exclude"], callback=_list(str), help="Module paths not to trace, e.g. head."),
    click.Option(["--memorized", "memorized"], metavar="PATH",
                 help="A scores.h5 of `spur memorization`: its top-memorized training examples are one more row on train."),
    click.Option(["--memorized-share", "memorized_share"], type=float,
                 help="Share of the training examples marked as top-memorized [0.05]."),
    click.Option(["--seed", "seed"], type=int, help="Seed of random interventions and controls [0]."),
)


def tracer_options(spec: Any, flags: dict[str, Any], settings: tuple[str, ...]) -> Any:
    """The tracer's options from the flags given and the `-o KEY=VALUE`s (which win), validated
    by its options class; a flag or key the tracer does not take is named with what it takes."""
    from spurcore.api import parse_override, structure

    fields = [] if spec.options is None else [field.name for field in attrs.fields(spec.options)]
    takes = f"its options: {', '.join(fields)}" if fields else "it takes none"
    values: dict[str, Any] = {}
    for flag in OPTION_FLAGS:
        if flags.get(flag.name) is not None:
            if flag.name not in fields:
                raise click.UsageError(f"{flag.opts[0]}: tracer {spec.name!r} has no option {flag.name!r} ({takes})")
            values[flag.name] = flags[flag.name]
    for text in settings:
        path, value = parse_override(text)
        if len(path) != 1 or path[0] not in fields:
            raise click.UsageError(f"-o {text}: tracer {spec.name!r} has no option {'.'.join(map(str, path))!r} ({takes})")
        values[str(path[0])] = value
    return None if spec.options is None else structure(spec.options, values, f"tracer {spec.name}")


@click.command("trace")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--tracer", "tracer_name", default=NAME, show_default=True, metavar="NAME",
              help="The registered tracer to run (spur list tracers).")
@click.option("-o", "--option", "settings", multiple=True, metavar="KEY=VALUE",
              help="An option of the tracer, a TOML value: -o k=[1,2] -o subset=\"all\".")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Output folder [RUN_DIR/trace/NAME].")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--quiet", is_flag=True, help="No progress bar or notes while it works; what it found is still printed.")
@click.pass_context
def trace_cmd(ctx, run_dir, tracer_name, settings, out, device, quiet, **flags):
    """Trace where the model of RUN_DIR memorizes its minority groups with a registered tracer.
    The default, memorization, scores neurons, changes the top ones and measures every group's
    accuracy on train and test; it writes trace.json and figures. The flags after --quiet
    set the tracer's option of that name (defaults in brackets: memorization's)."""
    from spurcore.api import SpurcoreError, plugin_manager
    from spurcore_tracer.trace import open_traced

    manager = plugin_manager(ctx)
    try:
        spec = manager.get("tracers", tracer_name)
    except SpurcoreError as error:
        raise click.BadParameter(str(error), param_hint="--tracer") from None
    options = tracer_options(spec, flags, settings)
    run = open_traced(run_dir, manager, device)
    found = spec.trace(run, options, out or run.out.trace_dir(spec.name), None if quiet else click.echo)
    if found:
        click.echo(found)

trace_cmd.params.extend(OPTION_FLAGS)  # the memorization tracer's options as flags
