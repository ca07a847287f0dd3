"""What a launcher is: the protocol `execute` drives (`Launcher`), what a launcher's factory
receives (`LaunchContext`, with `--launcher-option`s), and `start_launcher`, which builds the
one a command asked for and refuses, naming it, one that breaks the protocol before any trial
is submitted (docs/sweeps.md, "Writing a launcher").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs

from spurcore.api import ConfigError, PluginManager, SpurcoreError, parse_override, structure


class LauncherError(SpurcoreError):
    """A launcher that cannot start, or breaks the protocol; the message names it."""


class Launcher(Protocol):
    """What `execute` asks of a launcher (the object a `LauncherSpec.factory` returns).

    `execute` keeps at most `capacity` trials submitted and not yet collected; it calls
    `submit(spec)` for each trial whose turn has come, `wait(pending)` with the handles of every
    trial submitted and not yet collected, and `close()` once, when the sweep ends, however it
    ends (Ctrl-C and SIGTERM included, not `kill -9`)."""

    capacity: int
    """How many trials may be submitted and not yet collected: an integer attribute, >= 1."""

    def submit(self, spec: dict[str, Any]) -> Any:
        """Start `run_trial(spec)` wherever this launcher runs work, without waiting for it, and
        return a handle for it (any hashable object: a future, a job, a process). `spec` is plain
        data (it pickles and turns into JSON)."""

    def wait(self, pending: list[Any]) -> Iterable[tuple[Any, dict[str, Any]]]:
        """Block until at least one of the `pending` handles has finished; return a (handle,
        record) pair for each finished one: the record `run_trial` returned, or, when the job
        itself was lost (killed, timed out, its node failed), `{"status": "failed", "error": why}`."""

    def close(self) -> None:
        """The sweep is over: release what this launcher holds and cancel every trial still running
        (on an interrupted sweep some are), so that no job trains on after its sweep."""


@attrs.frozen(kw_only=True)
class LaunchContext:
    """What a `LauncherSpec.factory(context)` receives: `spur sweep --launcher NAME` (or `spur
    memorization`) with its `--jobs`, `--threads` (each trial's torch threads, already applied by
    `run_trial`), `--address` (None when not given) and `--launcher-option KEY=VALUE` (`options`:
    each value read as a TOML literal when it is one, `gpus=1`, `setup=["module load cuda"]`, and
    as a string otherwise, `partition=gpu`); `out`, the sweep's folder (absolute; a launcher may
    keep its own files below it: it exists once the first trial is submitted); `plugins`, the
    sweep's plugin manager (for a launcher that runs trials in this process)."""

    name: str
    jobs: int = 1
    threads: int = 1
    address: str | None = None
    options: Mapping[str, Any] = attrs.field(factory=dict)
    out: Path = attrs.field(converter=lambda p: Path(p).resolve(), default=".")
    plugins: PluginManager | None = None

    def settings(self, cls: type | None) -> Any:
        """`options` as an instance of the attrs class `cls` (every key and type checked: an
        unknown key or a bad value is a ConfigError naming the option), or None when `cls` is
        None, which refuses any option."""
        if cls is None:
            if self.options:
                raise ConfigError(f"--launcher {self.name} takes no --launcher-option (given: {', '.join(self.options)})")
            return None
        try:
            return structure(cls, dict(self.options))
        except ConfigError as error:
            raise ConfigError(f"--launcher {self.name} --launcher-option {error}") from None


def parse_launcher_options(items: Sequence[str]) -> dict[str, Any]:
    """`--launcher-option KEY=VALUE` (repeatable) -> {KEY: VALUE}, each value read as `-o` reads
    it (a TOML literal when it is one, a string otherwise)."""
    options: dict[str, Any] = {}
    for item in items:
        key = item.split("=", 1)[0].strip()
        if "=" not in item or not key.isidentifier():
            raise ConfigError(f"--launcher-option {item!r}: expected KEY=VALUE, e.g. partition=gpu")
        if key in options:
            raise ConfigError(f"--launcher-option {key}: given twice")
        options[key] = parse_override(item)[1]
    return options


def start_launcher(plugins: PluginManager, name: str, *, jobs: int = 1, threads: int = 1, address: str | None = None,
                   options: Sequence[str] = (), out: Path | str = ".") -> Launcher:
    """The launcher registered as `name`, built by its factory from the command line's values
    (`options` as given to `--launcher-option`), checked against the protocol."""
    context = LaunchContext(name=name, jobs=jobs, threads=threads, address=address,
                            options=parse_launcher_options(options), out=out, plugins=plugins)
    launcher = plugins.get("launchers", name).factory(context)
    check_launcher(launcher, name)
    return launcher


def check_launcher(launcher: Any, name: str) -> None:
    """Refuse, naming what is wrong, a launcher that does not follow the protocol, before any trial
    is submitted (a `capacity()` method instead of an integer used to fail after the first trial)."""
    missing = [m for m in ("submit", "wait", "close") if not callable(getattr(launcher, m, None))]
    capacity = getattr(launcher, "capacity", None)
    if missing:
        raise LauncherError(f"launcher {name!r} ({type(launcher).__qualname__}) has no {', '.join(missing)} method")
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise LauncherError(f"launcher {name!r} ({type(launcher).__qualname__}): capacity must be an integer "
                            f"attribute >= 1 (trials submitted at a time), got {capacity!r}")
