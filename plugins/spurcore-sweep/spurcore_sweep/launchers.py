"""Where a sweep's trials run: the scheduler (`execute`) and the built-in launchers (this
process, a local process pool, Ray); the protocol they follow is `protocol`'s.

Every launcher runs the same `spurcore_sweep.trials.run_trial`; the scheduler here starts a trial as
soon as the trial it starts from (its baseline) has finished, skips trials whose run is already
finished, and records a failed trial without stopping the others. However the sweep ends (all
trials done, an error, Ctrl-C, SIGTERM) it closes the launcher, which cancels what still runs:
process-pool workers also die with the sweep that started them when it is killed outright.
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from spurcore.api import PluginManager
from spurcore_sweep.protocol import Launcher, LauncherError
from spurcore_sweep.trials import Sweep, Trial, finished, run_trial, write_origin


class Inline:
    """Trials one after the other in this process (`--jobs 1`), with the caller's plugins."""

    capacity = 1  # trials submitted at a time

    def __init__(self, manager: PluginManager | None = None) -> None:
        self.manager = manager

    def submit(self, spec: dict[str, Any]) -> Any:
        future: futures.Future = futures.Future()
        future.set_result(run_trial(spec, self.manager))
        return future

    def wait(self, pending: list[Any]) -> Iterator[tuple[Any, dict[str, Any]]]:
        done, _ = futures.wait(pending, return_when=futures.FIRST_COMPLETED)
        return ((f, f.result()) for f in done)

    def close(self) -> None:
        pass


class Pool(Inline):
    """Up to `jobs` trials at a time in fresh processes (spawned: no forked torch state), each
    ending itself when this process dies (`exit_with_parent`)."""

    def __init__(self, jobs: int) -> None:
        self.pool = futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=exit_with_parent, initargs=(os.getpid(),))
        self.capacity = jobs
        self.submitted: list[futures.Future] = []

    def submit(self, spec: dict[str, Any]) -> Any:
        future = self.pool.submit(run_trial, spec)
        self.submitted.append(future)
        return future

    def close(self) -> None:
        """Shut the pool down; on an interrupted sweep, kill the workers still training (their runs
        keep their last checkpoints, and a relaunch continues them) instead of waiting for them."""
        interrupted = any(not future.done() for future in self.submitted)
        workers = list((getattr(self.pool, "_processes", None) or {}).values())
        self.pool.shutdown(wait=not interrupted, cancel_futures=True)
        if interrupted:
            for worker in workers:
                worker.kill()


def exit_with_parent(parent: int) -> None:
    """Pool initializer: end this worker when `parent`, the sweep, dies, however it dies (`kill -9`
    included). A worker outliving its sweep would train on unsupervised, a gigabyte of memory
    each, while a relaunch starts the same trials. On Linux the kernel kills the worker at once
    (`PR_SET_PDEATHSIG`), even in the middle of a long C call; everywhere, a thread also checks
    twice a second that the parent is still `parent`."""
    _kill_with_parent()
    watch_parent(parent)


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _kill_with_parent() -> None:
    """Ask Linux for SIGKILL when the parent dies. The kernel watches the parent *thread* that
    started the worker: `execute` submits every trial and shuts the pool down in one thread, so
    that thread outlives every worker it starts."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl in this libc: the watching thread still ends the worker
        pass


def watch_parent(parent: int, interval: float = 0.5) -> None:
    """Start a daemon thread that ends this process (`os._exit`) once its parent is no longer
    `parent` (a dead parent's children are handed to another process); portable, and it also
    covers a parent that died before this process could ask the kernel."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="spurcore-exit-with-parent", daemon=True).start()


class Ray:
    """Trials as Ray tasks on the cluster at `address` (a local instance when None), each asking
    for `cpus_per_trial` CPUs (the trial's torch threads), and one GPU when the cluster has GPUs.
    Run directories must be on storage every node sees."""

    def __init__(self, address: str | None, cpus_per_trial: int) -> None:
        try:
            import ray
        except ImportError:
            raise LauncherError("--launcher ray needs Ray: pip install 'spurcore-sweep[ray]'") from None
        self.ray = ray
        self.cpus = cpus_per_trial
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        self.capacity = 10**6  # Ray queues tasks until the cluster has room
        self.task = ray.remote(num_cpus=cpus_per_trial, num_gpus=gpus, max_retries=0)(run_trial)

    def submit(self, spec: dict[str, Any]) -> Any:
        return self.task.remote(spec)

    def wait(self, pending: list[Any]) -> Iterator[tuple[Any, dict[str, Any]]]:
        done, _ = self.ray.wait(pending, num_returns=1)
        return ((ref, self._result(ref)) for ref in done)

    def _result(self, ref: Any) -> dict[str, Any]:
        try:
            return self.ray.get(ref)
        except Exception as error:  # noqa: BLE001 - a lost worker is a failed trial, not a lost sweep
            return {"status": "failed", "error": f"ray: {type(error).__name__}: {error}"}

    def close(self) -> None:
        """Nothing to cancel here: Ray ends the tasks a driver owns when the driver (the sweep)
        exits, however the sweep ended."""


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """While the sweep runs, SIGTERM (`kill PID`, a scheduler ending the job that runs the sweep)
    interrupts it as Ctrl-C does (KeyboardInterrupt), so that its launcher is closed and cancels
    the trials still running; Python's default would end the process at once, leaving the jobs
    of an external scheduler running. Only the main thread can set a signal handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def execute(sweep: Sweep, launcher: Launcher, on_record: Callable[[Trial, dict[str, Any]], None]) -> dict[str, dict[str, Any]]:
    """Run every unfinished trial, a trial only after the one it starts from; returns the
    record of every trial by path (`on_record` hears each as it arrives). The launcher is closed
    when this returns or raises (Ctrl-C and SIGTERM included)."""
    records: dict[str, dict[str, Any]] = {}
    waiting = list(sweep.trials)
    running: dict[Any, Trial] = {}

    def settle(trial: Trial, record: dict[str, Any]) -> None:
        records[trial.path] = record
        on_record(trial, record)

    try:
        with sigterm_interrupts():
            while waiting or running:
                for trial in list(waiting):
                    if len(running) >= launcher.capacity:
                        break
                    before = records.get(trial.after) if trial.after else {"status": "done"}
                    if before is None:
                        continue
                    waiting.remove(trial)
                    if before["status"] == "failed" or before["status"].startswith("not run"):
                        settle(trial, {"status": f"not run: {trial.after} failed"})
                    elif (earlier := finished(sweep, trial)) is not None:
                        settle(trial, earlier)
                    else:
                        write_origin(sweep, trial)
                        running[launcher.submit(trial.spec(sweep))] = trial
                if not running:
                    if waiting:  # pragma: no cover - a trial after one that is not in this sweep
                        raise LauncherError(f"{waiting[0].path} waits for {waiting[0].after}, which this sweep lacks")
                    break
                for handle, record in launcher.wait(list(running)):
                    if handle not in running:
                        raise LauncherError(f"{type(launcher).__qualname__}.wait returned {handle!r}, which is not "
                                            f"one of the pending handles it was given")
                    settle(running.pop(handle), record)
    finally:
        launcher.close()
    return records
