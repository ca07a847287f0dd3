"""spurcore's test kit, a pytest plugin that tests opt into, as they do into pytester:

    pytest_plugins = ["spurcore.testing"]      # in the root conftest.py of a plugin's repository

or `-p spurcore.testing` (e.g. in `[tool.pytest.ini_options] addopts`), so plugin authors test
the way the kernel does. It is not loaded into every pytest session of an environment that has
spurcore installed: it imports torch, and its fixtures would take common names. They all start
with `spur_`:

* `spur_plugins`: a plugin manager with the built-ins and the tiny world (dataset `tiny`,
  backbone `mlp`, last-layer stage `tiny-refit`), no entry points;
* `spur_register_plugin(plugin, name=None)`: registers a plugin on `spur_plugins` for one test only;
* `spur_tiny_config(**keys)`: a validated tiny pipeline; `spur_tiny_data`, `spur_tiny_backbone`: the pieces;
* `spur_cli(*args)`: runs the `spur` command line with `spur_plugins`, returns click's result;
* `mitigation_conformance(method, plugin=...)`: the mitigation contract as a test class;
* `StopAtEpoch(epoch)`: a plugin that stops a run at the start of that epoch, as a Ctrl-C
  would, for tests of `--resume`;
* `spur_read_only(path)`: makes a folder and everything in it read-only to this process until
  the test ends (`chmod` for a user; `chattr +i` for root, whom modes do not stop);
* `wait_for(condition, seconds, what)` and `run_folder_free(run)`: for tests that stop a
  sweep or a run in another process and wait for its trials to be gone;
* `OnDevice`: a tensor that behaves as one on a GPU does (numpy cannot read it, it cannot index
  a CPU tensor), for tests that a method's hooks are device safe on a CPU-only machine.

    def test_my_method(spur_plugins, spur_register_plugin, spur_tiny_config, tmp_path):
        spur_register_plugin(my_plugin)
        config = spur_tiny_config(stages=[{"method": "mine"}])
        summary = run_pipeline(config, tmp_path / "run", spur_plugins)

    TestConformance = mitigation_conformance("mine", plugin=my_plugin)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from spurcore import hookimpl
from spurcore.config import pipeline_from_dict
from spurcore.data import SpuriousData
from spurcore.model import Backbone
from spurcore.plugins import PluginManager
from spurcore.runlock import RunLockedError, locked
from spurcore.testing.conformance import kit_manager, mitigation_conformance
from spurcore.testing.device import OnDevice
from spurcore.testing.tiny import MLPOptions, TinyOptions, TinyPlugin, TinyRefit, make_mlp, make_tiny

__all__ = [
    "MLPOptions", "OnDevice", "StopAtEpoch", "TinyOptions", "TinyPlugin", "TinyRefit", "kit_manager", "make_mlp",
    "make_tiny", "mitigation_conformance", "run_folder_free", "tiny_pipeline", "wait_for",
]


class StopAtEpoch:
    """Stops a run at the start of `epoch` with a KeyboardInterrupt, as a Ctrl-C would."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    @hookimpl
    def spurcore_epoch_start(self, epoch: int) -> None:
        if epoch == self.epoch:
            raise KeyboardInterrupt


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll `condition` every 0.1 s until it holds; an AssertionError naming `what` when it
    has not within `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        time.sleep(0.1)


def run_folder_free(run: Path) -> bool:
    """Whether no process holds the lock of the run folder `run` (the operating system drops
    it when its holder dies, however it dies)."""
    try:
        with locked(run):
            return True
    except RunLockedError:
        return False


@pytest.fixture
def spur_read_only() -> Iterator[Callable[[Path], Path]]:
    """`spur_read_only(path)` makes the folder `path` and everything below it read-only to this
    process, as a shared or archived run is, until the test ends: by mode bits for a user, by
    the immutable attribute for root (skips where `chattr` cannot set it)."""
    undo: list[Callable[[], None]] = []

    def read_only(path: Path) -> Path:
        path = Path(path)
        if os.geteuid() != 0:
            modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")]}
            for p, mode in modes.items():
                p.chmod(mode & ~0o222)
            undo.append(lambda: [p.chmod(mode) for p, mode in modes.items()])
            return path
        if shutil.which("chattr") is None:
            pytest.skip("running as root, and there is no chattr to make a folder immutable")
        undo.append(lambda: subprocess.run(["chattr", "-R", "-i", str(path)], capture_output=True))
        if subprocess.run(["chattr", "-R", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("running as root, and chattr cannot make a folder immutable here")
        return path

    yield read_only
    for step in reversed(undo):
        step()


@pytest.fixture
def spur_plugins() -> PluginManager:
    """A plugin manager with the built-ins and the tiny test plugin (no entry points)."""
    return kit_manager()


@pytest.fixture
def spur_register_plugin(spur_plugins: PluginManager) -> Iterator[Callable[..., object]]:
    """`spur_register_plugin(plugin, name=None)` registers `plugin` on `spur_plugins` (hook names are
    checked as in a real install) and unregisters it when the test ends, pass or fail."""
    added: list[object] = []

    def register(plugin: object, name: str | None = None) -> object:
        spur_plugins.register(plugin, name)
        added.append(plugin)
        return plugin

    yield register
    for plugin in reversed(added):
        if spur_plugins.pm.is_registered(plugin):
            spur_plugins.unregister(plugin)


def tiny_pipeline(**overrides: Any) -> dict:
    """A tiny pipeline as plain data (ERM for 3 epochs); keyword arguments replace top-level keys."""
    data = {
        "selector": "val-wga",
        "seed": 0,
        "device": "cpu",
        "dataset": {"name": "tiny"},
        "backbone": {"name": "mlp"},
        "train": {"epochs": 3, "batch_size": 32, "lr": 0.01},
        "stages": [{"method": "erm"}],
    }
    data.update(overrides)
    return data


@pytest.fixture
def spur_tiny_config():
    """Build a validated tiny pipeline; keyword arguments replace top-level keys."""

    def build(**overrides):
        return pipeline_from_dict(tiny_pipeline(**overrides))

    return build


@pytest.fixture
def spur_tiny_data() -> SpuriousData:
    """The tiny spurious dataset: 200 train, 120 val, 160 test examples of 8 features; the
    attribute agrees with the class on 90% of train and half of val/test."""
    return make_tiny(TinyOptions())


@pytest.fixture
def spur_tiny_backbone(spur_tiny_data: SpuriousData) -> Backbone:
    """The tiny backbone for `spur_tiny_data`: Linear(8, 16) + ReLU, 16 features."""
    return make_mlp(MLPOptions(), spur_tiny_data)


@pytest.fixture
def spur_cli(spur_plugins: PluginManager) -> Callable[..., Any]:
    """`spur_cli("list", "mitigations")` runs the `spur` command line in-process with the
    test's `spur_plugins` (and the commands they register); returns click's `Result`."""
    from click.testing import CliRunner

    from spurcore.cli import command_group

    def invoke(*args: Any) -> Any:
        group = command_group()  # as `spur` does: the kernel's commands and these plugins'
        spur_plugins.hook.spurcore_register_commands(cli=group)
        obj = {"manager": spur_plugins, "plugin_args": []}
        return CliRunner().invoke(group, [str(a) for a in args], obj=obj, catch_exceptions=False)

    return invoke
