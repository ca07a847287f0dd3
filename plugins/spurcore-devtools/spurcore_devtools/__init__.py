"""spurcore-devtools: `spur new-plugin`, a plugin package per kind that installs and passes its
own tests as generated (`scaffold`, with its `templates/`)."""

from __future__ import annotations

from pathlib import Path

import click

from spurcore import hookimpl

__version__ = "0.1.0"


@click.command("new-plugin")
@click.argument("name")
@click.option("--kind", required=True, metavar="KIND",
              help="What the plugin registers: mitigation, posthoc-mitigation, dataset, backbone, selector, "
                   "metric, tracer, observer or launcher.")
@click.option("--out", "out", default=".", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to create spurcore-NAME in.")
def new_plugin_cmd(name: str, kind: str, out: Path) -> None:
    """Create a plugin package NAME: pyproject with the entry point, module, README, tests."""
    from spurcore_devtools.scaffold import KINDS, new_plugin

    if kind not in KINDS:
        raise click.BadParameter(f"{kind!r} is not one of {', '.join(KINDS)}", param_hint="--kind")
    root = new_plugin(name, kind, out)
    click.echo(f"created {root}")
    click.echo(f"next: pip install -e {root} && python -m pytest {root / 'tests'}")


@hookimpl
def spurcore_register_commands(cli):
    cli.add_command(new_plugin_cmd)
