"""The `spur` command line: composes pipelines from whatever plugins are installed.

`-p NAME` loads a plugin (an entry point or a module), `-p no:NAME` blocks one; both come
before the subcommand. Plugins add their own subcommands through `spurcore_register_commands`.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import attrs
import click

from spurcore import __version__, portable
from spurcore.errors import SpurcoreError
from spurcore.plugins import PluginManager


def _plugin_args(argv: Sequence[str]) -> list[str]:
    """The values of every `-p` before the subcommand (needed before click parses)."""
    found, args = [], list(argv)
    for i, arg in enumerate(args):
        if arg == "-p" and i + 1 < len(args):
            found.append(args[i + 1])
        elif arg.startswith("-p") and len(arg) > 2:
            found.append(arg[2:])
        elif arg.startswith("--plugin="):
            found.append(arg.split("=", 1)[1])
    return found


class SpurGroup(click.Group):
    """Turns every bad-input error into one clear message and its exit code, and so a write
    that fails for want of space or permission (in any command, a plugin's included)."""

    def invoke(self, ctx: click.Context):
        from spurcore.atomic import storage_cause, storage_message

        try:
            return super().invoke(ctx)
        except SpurcoreError as exc:
            error = click.ClickException(str(exc))
            error.exit_code = exc.exit_code
            raise error from None
        except Exception as exc:
            cause = storage_cause(exc)
            if cause is None:
                raise
            raise click.ClickException(storage_message(cause)) from None


@click.group(cls=SpurGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-p", "--plugin", "plugin_args", multiple=True, metavar="NAME",
              help="Load plugin NAME, or block it with no:NAME. Repeatable.")
@click.version_option(__version__, prog_name="spur")
@click.pass_context
def cli(ctx: click.Context, plugin_args: tuple[str, ...]) -> None:
    """spurcore: find where a network memorizes its minority groups, and fix it."""
    ctx.ensure_object(dict)
    ctx.obj.setdefault("plugin_args", list(plugin_args))


def plugin_manager(ctx: click.Context) -> PluginManager:
    """The plugin manager of this `spur` invocation (honouring -p); plugin commands use it."""
    ctx = ctx.find_root()
    ctx.ensure_object(dict)
    ctx.obj.setdefault("plugin_args", [])
    if "manager" not in ctx.obj:
        ctx.obj["manager"] = PluginManager.from_args(ctx.obj["plugin_args"])
    return ctx.obj["manager"]


@cli.command("plugins")
@click.option("--hooks", "stage_hooks", is_flag=True,
              help="Also list the stage hooks of every mitigation (this imports the mitigations' code; "
                   "--json always lists them).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def plugins_cmd(ctx: click.Context, stage_hooks: bool, as_json: bool) -> None:
    """List loaded plugins: name, version, hooks, mitigations (and those that failed to load)."""
    manager = plugin_manager(ctx)
    infos = manager.infos(stage_hooks=stage_hooks or as_json)
    if as_json:
        rows = [attrs.asdict(i) for i in infos]
        rows += [{"name": n, "version": "", "hooks": [], "mitigations": [], "stage_hooks": {}, "builtin": False,
                  "error": e} for n, e in manager.failed.items()]
        click.echo(json.dumps(rows, indent=2))
        return
    for info in infos:
        tag = " (built-in)" if info.builtin else ""
        click.echo(f"{info.name} {info.version}{tag}")
        click.echo(f"    hooks: {', '.join(info.hooks)}")
        if info.mitigations and not stage_hooks:
            click.echo(f"    mitigations: {', '.join(info.mitigations)}")
        for method, hooks in sorted(info.stage_hooks.items()):
            shown = hooks if isinstance(hooks, str) else ", ".join(hooks) or "none"
            click.echo(f"    mitigation {method}, stage hooks: {shown}")
    for name, error in manager.failed.items():
        click.echo(f"{name} FAILED TO LOAD: {error}")


@cli.command("list")
@click.argument("kind")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def list_cmd(ctx: click.Context, kind: str, as_json: bool) -> None:
    """List what plugins offer of one KIND (datasets, backbones, mitigations, selectors,
    metrics, observers, and the kinds plugins declare: tracers, launchers), marking (from each
    spec) what reads attribute labels."""
    from spurcore.errors import ConfigError
    from spurcore.plugins import PluginError, default_options

    manager = plugin_manager(ctx)
    try:
        entries = manager.registry(kind)
    except PluginError as exc:
        raise click.BadParameter(str(exc), param_hint="KIND") from None
    rows = []
    for name, entry in sorted(entries.items()):
        spec = entry.spec
        row = {"name": name, "plugin": entry.plugin, "description": spec.description}
        if hasattr(spec, "kind"):  # a mitigation: needs_attributes may be a function of its options
            row["kind"] = spec.kind
            varies = callable(spec.needs_attributes)
            try:
                row["needs_attributes"] = spec.attribute_splits(default_options(spec) if varies else None)
            except ConfigError as exc:
                row["needs_attributes"] = f"depends on the options ({exc})"
            row["needs_attributes_depend_on_options"] = varies
            row["search_space"] = {option: list(values) for option, values in spec.search_space.items()}
            row["fine_tunes"] = spec.fine_tunes
        elif hasattr(spec, "needs_attributes"):
            row["needs_attributes"] = spec.needs_attributes
        rows.append(row)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        needs = row.get("needs_attributes")
        defaults = " with the default options" if row.get("needs_attributes_depend_on_options") else ""
        if "needs_attributes" not in row:
            flag = ""
        elif isinstance(needs, str):
            flag = " [attribute labels depend on the options]"
        elif needs:
            splits = "" if needs is True else f" on {', '.join(needs)}"
            flag = f" [needs attribute labels{splits}{defaults}]"
        else:
            flag = f" [no attribute labels{defaults}]"
        click.echo(f"{row['name']:<18} {row['description']}{flag}  ({row['plugin']})")


@cli.command("run")
@click.argument("pipeline", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Run directory.")
@click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a pipeline key, e.g. -o train.epochs=3 -o stages.0.options.x=1.")
@click.option("--seed", type=int, help="Same as -o seed=N.")
@click.option("--device", help="auto, cpu, cuda or cuda:N (same as -o device=...).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--quiet", is_flag=True,
              help="No progress bar and no log lines (the run.log messages of the kernel and plugins); "
                   "the final table is still printed.")
@click.pass_context
def run_cmd(ctx: click.Context, pipeline: Path, out: Path, overrides: tuple[str, ...], seed: int | None,
            device: str | None, resume: bool, quiet: bool) -> None:
    """Run PIPELINE (a TOML file) into the run directory --out."""
    from spurcore import distributed, report
    from spurcore.config import load_pipeline
    from spurcore.runner import run_pipeline

    extra = list(overrides)
    if seed is not None:
        extra.append(f"seed={seed}")
    if device is not None:
        extra.append(f"device={json.dumps(device)}")
    config = load_pipeline(pipeline, extra)
    quiet = quiet or not distributed.writes_files()  # under torchrun, rank 0 speaks for all
    summary = run_pipeline(config, out, plugin_manager(ctx), resume=resume, quiet=quiet,
                           log=(lambda m: None) if quiet else click.echo)
    if not distributed.writes_files():
        return
    click.echo(report.group_table(summary["metrics"]), nl=False)
    click.echo(f"selected: {summary['selected']}; run directory: {out}")


@cli.command("prepare")
@click.argument("pipeline", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a pipeline key.")
@click.pass_context
def prepare_cmd(ctx: click.Context, pipeline: Path, overrides: tuple[str, ...]) -> None:
    """Build what PIPELINE makes once and caches (its dataset, pretrained backbone weights)
    without training, so that runs and sweep workers start at once."""
    from spurcore.config import load_pipeline
    from spurcore.building import build_base_model, build_data
    from spurcore.planning import plan

    manager = plugin_manager(ctx)
    planned = plan(load_pipeline(pipeline, list(overrides)), manager)
    data = build_data(planned, manager)
    model = build_base_model(planned, data, manager)
    sizes = ", ".join(f"{name} {len(split)}" for name, split in data.splits.items())
    click.echo(f"dataset {data.name}: {sizes}")
    click.echo(f"model: backbone {planned.config.backbone.name}, {model.feature_dim} features, {data.n_classes} classes")


@cli.command("show")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
def show_cmd(run_dir: Path) -> None:
    """Print the per-group table of a finished run, per stage (train, val, test, memorization gap)."""
    from spurcore import report
    from spurcore.rundir import RunDir

    summary = RunDir(run_dir).read_summary()
    for stage in summary["stages"]:
        chosen = stage["selected"]
        how = f"epoch {chosen['epoch']} by {chosen['selector']}" if chosen["selector"] else "post hoc"
        click.echo(f"stage {stage['name']} ({stage['method']}, {how})")
        if note := report.train_eval_note(stage):
            click.echo(note)
        click.echo(report.group_table(stage["metrics"]))


KERNEL_COMMANDS = dict(cli.commands)  # the kernel's own, before any plugin adds one


def command_group() -> click.Group:
    """A `spur` group with the kernel's commands only, for one invocation to add plugins' to."""
    group = copy.copy(cli)
    group.commands = dict(KERNEL_COMMANDS)
    return group


def main(argv: Sequence[str] | None = None) -> None:
    portable.pin_environment()  # before torch is imported (by whatever command computes)
    argv = list(sys.argv[1:] if argv is None else argv)
    plugin_args = _plugin_args(argv)
    manager = PluginManager.from_args(plugin_args)
    group = command_group()
    manager.hook.spurcore_register_commands(cli=group)
    group.main(args=argv, prog_name="spur", obj={"manager": manager, "plugin_args": plugin_args})
