"""The submitit launcher: `run_trial(spec)` as a submitit job per trial, on SLURM or as a local
process, with the sweep's `--launcher-option`s as the job's resources; `close` cancels the jobs
still running, so an interrupted sweep (Ctrl-C, SIGTERM) leaves none behind."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any, Literal

import attrs

from spurcore.api import non_negative, positive
from spurcore_sweep import LaunchContext, run_trial


def _optional(validator):
    return attrs.validators.optional(validator)


@attrs.frozen(kw_only=True)
class SubmititOptions:
    """`--launcher submitit --launcher-option KEY=VALUE`, each key at most once."""

    cluster: Literal["auto", "slurm", "local"] = "auto"  # auto: SLURM where `srun` is found, else local processes
    folder: str = ".submitit"  # jobs' pickles and logs: below --out unless absolute (on storage the nodes see)
    time: int = attrs.field(default=240, validator=positive)  # minutes a trial may run before it is stopped
    partition: str | None = None  # SLURM partition
    gpus: int = attrs.field(default=0, validator=non_negative)  # GPUs per trial; 0: it runs on the CPU
    cpus: int | None = attrs.field(default=None, validator=_optional(positive))  # CPUs per trial (default: --threads)
    mem_gb: float | None = attrs.field(default=None, validator=_optional(positive))  # memory per trial
    account: str | None = None  # SLURM account
    qos: str | None = None  # SLURM quality of service
    constraint: str | None = None  # SLURM node features
    setup: list[str] = attrs.field(factory=list)  # shell lines before each trial: ["module load cuda"]
    poll: float = attrs.field(default=1.0, validator=positive)  # seconds between checks of the running jobs


def interruptible_jobs() -> None:
    """Local jobs are cancelled with SIGINT, and a job inherits this process's SIGINT ignored
    when the sweep was started from a background shell job (`spur sweep ... &`, nohup): it would
    train on, holding its run folder. So SIGINT interrupts again (in the main thread only)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


class Submitit:
    """At most `--jobs` trials submitted at a time (give a cluster a large `--jobs`: its queue
    holds the rest), each a submitit job running `run_trial(spec)` with `--threads` CPUs (or
    `cpus`), `gpus` GPUs, `time` minutes and the SLURM `partition`, `account`, `qos` and
    `constraint` when given. A job lost without a result (timed out, cancelled, its node gone) is a
    failed trial naming its log."""

    def __init__(self, context: LaunchContext) -> None:
        import submitit

        options: SubmititOptions = context.settings(SubmititOptions)
        self.capacity = context.jobs
        self.out = context.out
        self.poll = options.poll
        self.pending: list[Any] = []
        self.executor = submitit.AutoExecutor(folder=context.out / options.folder,
                                              cluster=None if options.cluster == "auto" else options.cluster)
        slurm = {"partition": options.partition, "account": options.account, "qos": options.qos,
                 "constraint": options.constraint}
        self.executor.update_parameters(
            timeout_min=options.time, cpus_per_task=options.cpus or context.threads, gpus_per_node=options.gpus,
            mem_gb=options.mem_gb, nodes=1, tasks_per_node=1,
            **{f"slurm_{key}": value for key, value in slurm.items() if value is not None},
            **({f"{self.executor.cluster}_setup": list(options.setup)} if options.setup else {}))
        if self.executor.cluster == "local":
            interruptible_jobs()

    def submit(self, spec: dict[str, Any]) -> Any:
        run = Path(spec["out"])  # the job's name in the queue: spur:<the trial's folder in the sweep>
        trial = run.relative_to(self.out).as_posix() if run.is_relative_to(self.out) else run.name
        self.executor.update_parameters(name=f"spur:{trial}")
        job = self.executor.submit(run_trial, spec)
        self.pending.append(job)
        return job

    def wait(self, pending: list[Any]) -> list[tuple[Any, dict[str, Any]]]:
        while not (done := [job for job in pending if job.done()]):
            time.sleep(self.poll)
        for job in done:
            self.pending.remove(job)
        return [(job, self._record(job)) for job in done]

    def _record(self, job: Any) -> dict[str, Any]:
        try:
            return job.result()
        except Exception as error:  # noqa: BLE001 - a lost job is a failed trial, not a lost sweep
            return {"status": "failed", "error": f"submitit job {job.job_id} ended without a result "
                                                 f"({type(error).__name__}, state {job.state}); its log: {job.paths.stderr}"}

    def close(self) -> None:
        """Cancel every job not yet collected (SLURM: `scancel`; local: SIGINT to the job, which
        ends its trial's process), and wait up to 10 s for local ones to be gone."""
        running = [job for job in self.pending if not job.done()]
        for job in running:
            job.cancel(check=False)
        deadline = time.monotonic() + 10
        while self.executor.cluster == "local" and any(not job.done() for job in running) and time.monotonic() < deadline:
            time.sleep(0.1)
