"""spurcore-sweep: `spur sweep` and `spur report`, an application on the plugin contract.

* `trials`: a sweep's trials from grids, search spaces, seeds and methods; `sweep.json`;
  `run_trial`, which runs one trial in whatever process a launcher gives it;
* `launchers`: the scheduler and the built-in launchers (`local`: this process or a process
  pool; `ray`), registered through `spurcore_register_launchers`, so a cluster launcher
  (SLURM, ...) is a plugin of its own;
* `kind`: the kind "launchers" this plugin owns (`LauncherSpec` and its hook);
* `comparison`: `spur report`, each method's settings chosen per selector, mean ± std;
* `commands`: the two commands.

Public to other plugins (`__all__`): `trial_at(run_dir)`, the sweep a run belongs to and its
`Trial` (method, settings, seed), which experiment trackers tag their runs with. Other
applications run their own trials through the same machinery (`spur memorization` trains its
K models this way): `Trial`s in a `Sweep`, run by `execute` on a registered launcher, recorded
by `write_manifest`, with the command-line options `launcher_options` and `parse_seeds`.
"""

from __future__ import annotations

from spurcore import hookimpl
from spurcore.api import lazy_exports
from spurcore_sweep.kind import LAUNCHERS, LauncherSpec

__version__ = "0.1.0"
__all__ = ["LauncherSpec", "Sweep", "Trial", "execute", "launcher_options", "parse_seeds", "toml_value", "trial_at", "write_manifest"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "Sweep": "spurcore_sweep.trials:Sweep",
    "Trial": "spurcore_sweep.trials:Trial",
    "execute": "spurcore_sweep.launchers:execute",
    "launcher_options": "spurcore_sweep.commands:launcher_options",
    "parse_seeds": "spurcore_sweep.commands:parse_seeds",
    "toml_value": "spurcore_sweep.trials:toml_value",
    "trial_at": "spurcore_sweep.trials:trial_at",
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


def _local(jobs, threads, address, plugins):
    from spurcore_sweep.launchers import Inline, Pool

    return Inline(plugins) if jobs <= 1 else Pool(jobs)


def _ray(jobs, threads, address, plugins):
    from spurcore_sweep.launchers import Ray

    return Ray(address, threads)


@hookimpl
def spurcore_register_launchers():
    return [
        LauncherSpec(name="local", factory=_local,
                     description="this process (--jobs 1) or a pool of --jobs spawned processes on this machine"),
        LauncherSpec(name="ray", factory=_ray,
                     description="Ray tasks on the cluster at --address (a local instance without it); "
                                 "pip install 'spurcore-sweep[ray]'"),
    ]
