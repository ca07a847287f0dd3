"""The kind "launchers", owned by this plugin: its record, `LauncherSpec`, and its hook,
`spurcore_register_launchers`, through which any plugin adds a place `spur sweep` runs trials."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from spurcore.api import KindSpec, hookspec, record_name


@attrs.frozen(kw_only=True)
class LauncherSpec:
    """Where a sweep runs its trials (this process, a process pool, Ray, a cluster scheduler).

    `factory(context)` returns the launcher a sweep hands its trials to; `context` is a
    `spurcore_sweep.LaunchContext` (`jobs`, `threads`, `address`, `options` from
    `--launcher-option`, the sweep's folder `out`, `plugins`). The launcher protocol (an integer
    `capacity`, `submit`, `wait`, `close`) is `spurcore_sweep.Launcher`, docs/sweeps.md.
    """

    name: str = attrs.field(validator=record_name)
    factory: Callable[[Any], Any]
    description: str = ""


class LauncherHooks:
    """The hook specification of the kind."""

    @hookspec
    def spurcore_register_launchers(self) -> list[LauncherSpec]:
        """Return the sweep launchers this plugin provides.

        Called once when the registry is gathered. `spur sweep --launcher NAME` calls
        `LauncherSpec.factory(context)` with a `spurcore_sweep.LaunchContext` and hands each trial
        to the launcher it returns (`spurcore_sweep.Launcher`: `capacity`, `submit`, `wait`,
        `close`), which runs `spurcore_sweep.run_trial(spec)` wherever it schedules work (a
        process pool, Ray, a cluster queue). The protocol and a whole launcher plugin:
        docs/sweeps.md, "Writing a launcher".

        Example::

            @hookimpl
            def spurcore_register_launchers():
                return [LauncherSpec(name="slurm", factory=lambda context: SlurmLauncher(context))]
        """


LAUNCHERS = KindSpec(name="launchers", record=LauncherSpec, hookspecs=LauncherHooks,
                     description="where `spur sweep --launcher NAME` runs its trials")
