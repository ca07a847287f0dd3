"""spurcore-activations: log the activations of named modules to HDF5.

* during a run: `[settings.activations]` in the pipeline (see `options.py`), recorded in the
  runner's evaluation passes into `<run>/activations.h5`;
* from a finished run: `spur activations RUN_DIR --module M [--split S] [--out FILE]`;
* read back: `ActivationFile(path).read(module, split=..., group=..., epoch=...)`.

Pieces: `reduce` (one output -> one row per example), `hooks` (forward hooks with an owner),
`writer` (the crash-safe HDF5 file), `reader`, `options`, `observer` (the pipeline plugin),
`extract` (an evaluation pass over a finished run) and `command` (the CLI).
"""

from __future__ import annotations

from spurcore import hookimpl
from spurcore.api import ObserverSpec, lazy, lazy_exports
from spurcore_activations.options import SETTINGS_KEY, ActivationOptions
from spurcore_activations.reduce import REDUCTIONS, reduce_output

__version__ = "0.1.0"
__all__ = [
    "ActivationError", "ActivationFile", "ActivationOptions", "ActivationWriter", "ModuleRecorder",
    "REDUCTIONS", "SCHEMA_VERSION", "reduce_output", "resolve_modules",
]
__getattr__, __dir__ = lazy_exports(__name__, {
    "ActivationError": "spurcore_activations.hooks:ActivationError",
    "ModuleRecorder": "spurcore_activations.hooks:ModuleRecorder",
    "resolve_modules": "spurcore_activations.hooks:resolve_modules",
    "ActivationFile": "spurcore_activations.reader:ActivationFile",
    "ActivationWriter": "spurcore_activations.writer:ActivationWriter",
    "SCHEMA_VERSION": "spurcore_activations.schema:SCHEMA_VERSION",
})


@hookimpl
def spurcore_register_observers():
    return [ObserverSpec(name=SETTINGS_KEY, settings=ActivationOptions,
                         factory=lazy("spurcore_activations.observer:observer"),
                         description="record named modules' activations in the evaluation passes, to HDF5")]


@hookimpl
def spurcore_register_commands(cli):
    from spurcore_activations.command import activations_cmd

    cli.add_command(activations_cmd)
