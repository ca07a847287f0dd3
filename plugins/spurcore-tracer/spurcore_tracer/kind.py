"""The kind "tracers", owned by this plugin: its record, `TracerSpec`, and its hook,
`spurcore_register_tracers`, through which any plugin adds a tracer to `spur trace`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from spurcore.api import KindSpec, hookspec, record_name


@attrs.frozen(kw_only=True)
class TracerSpec:
    """A memorization tracer: `trace(run, options, out, log)` analyses a finished run and writes
    what it finds into the folder `out`.

    `spur trace RUN_DIR --tracer NAME` runs it: `run` is the `spurcore.api.FinishedRun` that
    `spurcore.api.open_run` returns (stages, epochs, data, `load_model(stage, epoch)` on the
    `--device` asked for); `options` an instance of `options` (an attrs class) validated from the
    command's `-o KEY=VALUE`s and flags, or None when the tracer takes none; `out` `--out`, by
    default `RUN_DIR/trace/NAME` (it may not exist yet); `log(line)` prints progress and is None
    under `--quiet` (show nothing while working, progress bars included). It returns a few lines
    for the user (what it found, what it wrote), which `spur trace` prints, under `--quiet` too.
    Tracers read a run's checkpoints and never change what the run computed.
    """

    name: str = attrs.field(validator=record_name)
    trace: Callable[[Any, Any, Any, Any], str]
    options: type | None = None
    description: str = ""


class TracerHooks:
    """The hook specification of the kind."""

    @hookspec
    def spurcore_register_tracers(self) -> list[TracerSpec]:
        """Return the memorization tracers this plugin provides.

        Called once when the registry is gathered. `spur trace RUN_DIR --tracer NAME` opens the
        run and calls `TracerSpec.trace(run, options, out, log)` with the finished run, the
        validated options, the output folder (default `RUN_DIR/trace/NAME`) and a printer of
        progress lines (None under `--quiet`); it writes into the folder and returns a few lines
        for the user, which `spur trace` prints.

        Example::

            @hookimpl
            def spurcore_register_tracers():
                return [TracerSpec(name="my-tracer", trace=trace, options=MyOptions)]
        """


TRACERS = KindSpec(name="tracers", record=TracerSpec, hookspecs=TracerHooks,
                   description="memorization tracers, run by `spur trace --tracer NAME`")
