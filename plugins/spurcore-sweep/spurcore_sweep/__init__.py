"""spurcore-sweep: `spur sweep` and `spur report`, an application on the plugin contract.

* `trials`: a sweep's trials from grids, search spaces, seeds and methods; `sweep.json`;
  `run_trial`, which runs one trial in whatever process a launcher gives it;
* `protocol`: what a launcher is (`Launcher`), what its factory receives (`LaunchContext`,
  `--launcher-option`) and `start_launcher`, which builds and checks it;
* `launchers`: the scheduler and the built-in launchers (`local`: this process or a process
  pool; `ray`), registered through `spurcore_register_launchers`, so a cluster launcher
  (SLURM: spurcore-submitit) is a plugin of its own;
* `kind`: the kind "launchers" this plugin owns (`LauncherSpec` and its hook);
* `comparison`: `spur report`, each method's settings chosen per selector, mean ± std;
* `commands`: the two commands.

Each trial's run folder gets an `origin.json` before it starts (`write_origin`: its sweep,
method, settings and seed), which experiment trackers tag their runs with without importing
this plugin. Other
applications run their own trials through the same machinery (`spur memorization` trains its
K models this way): `Trial`s in a `Sweep`, run by `execute` on the launcher `start_launcher`
builds, recorded by `write_manifest`, with the command-line options `launcher_options` and
`parse_seeds`. Launcher plugins: a `LauncherSpec` whose factory takes a `LaunchContext` and
returns a `Launcher` (the protocol, docs/sweeps.md) that runs `run_trial(spec)` where it
schedules work.
"""

from __future__ import annotations

from spurcore import hookimpl
from spurcore.api import lazy_exports
from spurcore_sweep.kind import LAUNCHERS, LauncherSpec

__version__ = "0.1.0"
__all__ = ["LaunchContext", "Launcher", "LauncherSpec", "Sweep", "Trial", "execute", "launcher_options", "parse_seeds",
           "run_trial", "start_launcher", "toml_value", "write_manifest"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "LaunchContext": "spurcore_sweep.protocol:LaunchContext",
    "Launcher": "spurcore_sweep.protocol:Launcher",
    "Sweep": "spurcore_sweep.trials:Sweep",
    "Trial": "spurcore_sweep.trials:Trial",
    "execute": "spurcore_sweep.launchers:execute",
    "launcher_options": "spurcore_sweep.commands:launcher_options",
    "parse_seeds": "spurcore_sweep.commands:parse_seeds",
    "run_trial": "spurcore_sweep.trials:run_trial",
    "start_launcher": "spurcore_sweep.protocol:start_launcher",
    "toml_value": "spurcore_sweep.trials:toml_value",
    "write_manifest": "spurcore_sweep.trials:write_manifest",
})


@hookimpl
def spurcore_register_kinds():
    return [LAUNCHERS]


@hookimpl
def spurcore_register_commands(cli):
    from spurcore_sweep.commands import report_cmd, sweep_cmd

    cli.add_command(sweep_cmd)
    cli.add_command(report_cmd)


def _local(context):
    from spurcore_sweep.launchers import Inline, Pool

    context.settings(None)
    return Inline(context.plugins) if context.jobs <= 1 else Pool(context.jobs)


def _ray(context):
    from spurcore_sweep.launchers import Ray

    context.settings(None)
    return Ray(context.address, context.threads)


@hookimpl
def spurcore_register_launchers():
    return [
        LauncherSpec(name="local", factory=_local,
                     description="this process (--jobs 1) or a pool of --jobs spawned processes on this machine"),
        LauncherSpec(name="ray", factory=_ray,
                     description="Ray tasks on the cluster at --address (a local instance without it); "
                                 "pip install 'spurcore-sweep[ray]'"),
    ]
