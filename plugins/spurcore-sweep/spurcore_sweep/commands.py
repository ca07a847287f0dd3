"""`spur sweep` and `spur report`, added to the command line through `spurcore_register_commands`."""

from __future__ import annotations

from pathlib import Path

import click

from spurcore.api import plugin_manager


def parse_seeds(text: str) -> list[int]:
    """`--seeds 0,1,2` -> [0, 1, 2], or a usage error."""
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected integers separated by commas, e.g. 0,1,2") from None


def launcher_options(command):
    """`--launcher`, `--jobs`, `--threads`, `--address` and `--launcher-option`: where and how many
    trials run at a time, for every command that runs trials (`spur sweep`, `spur memorization`);
    `start_launcher` builds the launcher from their values."""
    for option in reversed((
        click.option("--launcher", default="local", show_default=True, metavar="NAME",
                     help="Where trials run: a registered launcher (spur list launchers): local, ray, ..."),
        click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, help="Trials at a time."),
        click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Torch threads of every trial, whatever the machine and --jobs: CPU results depend on it."),
        click.option("--address", help="The launcher's scheduler address (Ray: the cluster; default: a local instance)."),
        click.option("--launcher-option", "launcher_option", multiple=True, metavar="KEY=VALUE",
                     help="An option of the launcher (repeatable; VALUE read as in -o), e.g. "
                          "--launcher submitit --launcher-option partition=gpu --launcher-option gpus=1."),
    )):
        command = option(command)
    return command


@click.command("sweep")
@click.argument("pipeline", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--grid", "grid", multiple=True, metavar="KEY=V1,V2",
              help="Values to sweep; every combination runs. METHOD.KEY applies to one --methods method.")
@click.option("--random", "random_draws", type=click.IntRange(min=1), metavar="N",
              help="N random draws from the search spaces the mitigations declare (keys --grid does not "
                   "set), crossed with every --grid combination.")
@click.option("--seeds", default="0", show_default=True, help="Seeds, e.g. 0,1,2.")
@click.option("--methods", default="", metavar="M1,A+B|all",
              help="Also run these mitigations against the pipeline (A+B: a chain of stages; all: every "
                   "installed one; all,A+B: both).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Sweep directory.")
@launcher_options
@click.pass_context
def sweep_cmd(ctx: click.Context, pipeline: Path, grid: tuple[str, ...], random_draws: int | None, seeds: str,
              methods: str, out: Path, launcher: str, jobs: int, threads: int, address: str | None,
              launcher_option: tuple[str, ...]) -> None:
    """Run PIPELINE over settings x seeds, one run directory each under --out; finished runs are
    skipped when launched again, failed ones recorded in sweep.json. Then: spur report DIR."""
    from spurcore_sweep import launchers, protocol, trials

    manager = plugin_manager(ctx)
    manager.get("launchers", launcher)  # an unknown launcher stops the sweep before it plans
    names = [m for m in methods.split(",") if m]
    settings = trials.parse_grid(grid)

    if "all" in names:
        others = [name for name in names if name != "all"]
        found, settings, left_out = trials.all_methods(pipeline, manager, settings, others)
        names = [*found, *others]
        for name, error in left_out.items():
            click.echo(f"--methods all: leaving out {name}: {error}", err=True)
    plan = trials.plan_sweep(pipeline, out, manager, grid=settings, seeds=parse_seeds(seeds), methods=names,
                             random_draws=random_draws, plugin_args=ctx.find_root().obj["plugin_args"],
                             threads=threads)
    chosen = protocol.start_launcher(manager, launcher, jobs=jobs, threads=threads, address=address,
                                     options=launcher_option, out=out)
    out.mkdir(parents=True, exist_ok=True)
    trials.write_manifest(plan, {})
    records: dict[str, dict] = {}
    total = len(plan.trials)

    def heard(trial, record) -> None:
        records[trial.path] = record
        trials.write_manifest(plan, records)
        state = "finished earlier" if record.get("skipped") else record["status"]
        extra = f": {record['error']}" if "error" in record else ""
        click.echo(f"[{len(records)}/{total}] {trial.path}: {state}{extra}")

    launchers.execute(plan, chosen, heard)
    failed = [p for p, r in records.items() if r["status"] != "done"]
    click.echo(f"{total - len(failed)} of {total} trials finished; {len(failed)} failed or not run. "
               f"Next: spur report {out}")
    if failed:
        ctx.exit(1)


@click.command("report")
@click.argument("sweep_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--selector", "selectors", multiple=True, metavar="NAME",
              help="Choose each method's settings with this selector. Repeatable (default: every installed one).")
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "json"]), default="md", show_default=True)
@click.option("--rows-by", "rows_by", multiple=True, metavar="KEY",
              help="One row per value of this setting (a grid key, e.g. prunedtwin.options.criterion) in the "
                   "methods that have it, each with its own best settings. Repeatable.")
@click.option("--html", "as_html", is_flag=True,
              help="Write DIR/report.html instead, one self-contained page (a sweep or a single run): tables, "
                   "figures, configs, traces, and the most memorized images when a scores file exists.")
@click.option("--scores", multiple=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="With --html: a `spur memorization` scores.h5 of the run's training split, for the gallery "
                   "(repeatable; scores.h5 files inside a run folder are found by themselves).")
@click.option("--gallery", "gallery_size", type=click.IntRange(min=1), default=8, show_default=True,
              help="With --html: images per group in the gallery of the most memorized.")
@click.pass_context
def report_cmd(ctx: click.Context, sweep_dir: Path, selectors: tuple[str, ...], fmt: str,
               rows_by: tuple[str, ...], as_html: bool, scores: tuple[Path, ...], gallery_size: int) -> None:
    """Compare the methods of a sweep: test WGA and average accuracy, mean ± std over seeds.
    With --html, DIR may also be a single run."""
    from spurcore_sweep import comparison

    manager = plugin_manager(ctx)
    names = list(selectors) or sorted(manager.registry("selectors"))
    if as_html:
        from spurcore_sweep.html import write_page

        click.echo(f"report: {write_page(sweep_dir, manager, names, rows_by, scores, gallery_size)}")
        return
    text, figure = comparison.write(sweep_dir, manager, names, fmt, rows_by)
    click.echo(text, nl=False)
    click.echo(f"figure: {figure}", err=True)
