"""The observer every tracker plugin registers: it connects a backend at run start and, after
every epoch, stage and at the run's end, logs the entries the run's records hold and the
tracker does not (`spurcore_tracking.records`), so a resumed run continues its tracked run
with no step twice and none missing.

A backend is what one tracker does with those entries:

    logged(key) -> set[int]          steps at which the tracked run holds `key`
    begin(resume_at, hyperparameters)  start writing; `resume_at` is the first step still to
                                     log (None: nothing yet), hyperparameters are logged if new
    log(entry)                       one entry, in one batch, its marker last
    finish(entry, files)             the run's end: its files as artifacts, then `log(entry)`
    close(status)                    "FINISHED", "FAILED" or "KILLED"

A failure to log after the run has started is printed and retried at the next epoch: a
tracker that is away for a while never stops a training run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from spurcore import hookimpl

from spurcore_tracking.identity import Identity
from spurcore_tracking.records import Entry, Layout, artifacts, entries, hyperparameters


class Backend(Protocol):
    def logged(self, key: str) -> set[int]: ...
    def begin(self, resume_at: int | None, hyperparameters: dict[str, Any]) -> None: ...
    def log(self, entry: Entry) -> None: ...
    def finish(self, entry: Entry, files: list[Any]) -> None: ...
    def close(self, status: str) -> None: ...


Connect = Callable[[Any, Any, Identity], Backend]  # (run, settings, identity) -> backend


class Tracker:
    """One run's observer for one tracker (`name` as in its messages)."""

    def __init__(self, name: str, settings: Any, connect: Connect) -> None:
        self.name = name
        self.settings = settings
        self.connect = connect
        self.run: Any = None
        self.backend: Backend | None = None
        self.held: dict[str, set[int]] = {}

    @hookimpl
    def spurcore_run_start(self, run):
        self.run = run
        self.layout = Layout.of(run)
        self.backend = self.connect(run, self.settings, Identity.of(run))
        pending = self.pending()
        self.backend.begin(pending[0].step if pending else None, hyperparameters(run.config))
        self.held = {}  # a tracker that purges what it had from `resume_at` on holds less now
        self.sync()

    @hookimpl
    def spurcore_epoch_end(self):
        self.sync()

    @hookimpl
    def spurcore_stage_end(self):
        self.sync()

    @hookimpl
    def spurcore_run_end(self):
        self.sync()
        self.close("FINISHED")

    @hookimpl
    def spurcore_run_error(self, error):
        self.close("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")

    def pending(self) -> list[Entry]:
        """The entries of the run's records that the tracked run does not hold, in step order."""
        return [entry for entry in entries(self.run, self.layout) if entry.step not in self._held(entry.marker)]

    def _held(self, key: str) -> set[int]:
        if key not in self.held:
            self.held[key] = set(self.backend.logged(key))
        return self.held[key]

    def sync(self) -> None:
        try:
            for entry in self.pending():
                if entry.kind == "final":
                    self.backend.finish(entry, artifacts(self.run))
                else:
                    self.backend.log(entry)
                self._held(entry.marker).add(entry.step)
        except Exception as error:  # noqa: BLE001 - the run goes on; what is missing is logged at the next sync
            self.held = {}
            self.run.log(f"{self.name}: could not log ({type(error).__name__}: {error}); trying again at the next epoch")

    def close(self, status: str) -> None:
        backend, self.backend = self.backend, None
        if backend is not None:
            backend.close(status)
