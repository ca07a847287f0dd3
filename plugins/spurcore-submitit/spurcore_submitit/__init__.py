"""spurcore-submitit: `spur sweep --launcher submitit`, every trial a job of submitit: a SLURM job
on a cluster (`--launcher-option cluster=slurm`, or found by `auto`), a local process elsewhere
(`cluster=local`); the jobs still running are cancelled when the sweep is interrupted (Ctrl-C,
SIGTERM). The options (`SubmititOptions`) and the launcher (`Submitit`) live in `launcher`, which
imports submitit only when a sweep uses it.
"""

from __future__ import annotations

from spurcore import hookimpl
from spurcore.api import lazy, lazy_exports
from spurcore_sweep import LauncherSpec

__version__ = "0.1.0"
__all__ = ["Submitit", "SubmititOptions"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "Submitit": "spurcore_submitit.launcher:Submitit",
    "SubmititOptions": "spurcore_submitit.launcher:SubmititOptions",
})


@hookimpl
def spurcore_register_launchers():
    return [LauncherSpec(name="submitit", factory=lazy("spurcore_submitit.launcher:Submitit"),
                         description="every trial a submitit job: SLURM on a cluster, local processes elsewhere "
                                     "(--launcher-option cluster=slurm|local, partition=..., time=MINUTES, gpus=N)")]
