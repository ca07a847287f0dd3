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

from spurcore.hookspecs import hookimpl
from spurcore.specs import ObserverSpec

from spurcore_activations import observer as _observer
from spurcore_activations.hooks import ActivationError, ModuleRecorder, resolve_modules
from spurcore_activations.options import ActivationOptions
from spurcore_activations.reader import ActivationFile
from spurcore_activations.reduce import REDUCTIONS, reduce_output
from spurcore_activations.schema import SCHEMA_VERSION
from spurcore_activations.writer import ActivationWriter

__version__ = "0.1.0"
__all__ = [
    "ActivationError", "ActivationFile", "ActivationOptions", "ActivationWriter", "ModuleRecorder",
    "REDUCTIONS", "SCHEMA_VERSION", "reduce_output", "resolve_modules",
]


@hookimpl
def spurcore_register_observers():
    return [ObserverSpec(name=_observer.SETTINGS_KEY, settings=ActivationOptions, factory=_observer.observer,
                         description="record named modules' activations in the evaluation passes, to HDF5")]


@hookimpl
def spurcore_register_commands(cli):
    from spurcore_activations.command import register

    register(cli)
