"""The MLflow backend of `spurcore_tracking.Tracker`, through `MlflowClient` (no global
active run, so runs in one process never mix).

Where: `tracking_uri`, or by default the SQLite store `sqlite:///<root>/mlflow.db` with
artifacts in `<root>/mlartifacts/`, `<root>` being the sweep folder for a sweep's trials and
the run folder's parent otherwise (`spurcore_tracking.Identity`). Creating a store and an
experiment happens under a file lock in `<root>`, so the trials a sweep runs side by side
share one store and one experiment.

Resume: the MLflow run's id is written to `<run>/mlflow.json` when it is created; a resumed
run reopens it and logs only the steps it lacks (each entry is one `log_batch`, its marker
last, so an entry is in the store whole or not at all). When the stored run is not in the
store any more (a moved or deleted store), a new MLflow run gets the whole history.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from spurcore.api import ConfigError, atomic, writes_files
from spurcore_tracking import Entry, Identity, Tracker

from spurcore_mlflow.options import SETTINGS_KEY, MlflowSettings

RUN_FILE = "mlflow.json"  # in the run directory: the tracking URI, experiment and run id
STORE = "mlflow.db"
ARTIFACTS = "mlartifacts"
LOCK = ".mlflow.lock"
BATCH = 100  # params per log_batch, MLflow's limit (metrics: 1000)
PARAM_LENGTH = 6000  # the shortest limit on a param's value among MLflow versions >= 2.10


def default_uri(root: Path) -> str:
    return f"sqlite:///{(root / STORE).resolve()}"


@contextlib.contextmanager
def store_lock(root: Path) -> Iterator[None]:
    """Held while a local store (and its experiment) may be created: two trials starting at
    once would both create the tables."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class MlflowRun:
    def __init__(self, run: Any, settings: MlflowSettings, identity: Identity) -> None:
        from mlflow import MlflowClient

        self.uri = settings.tracking_uri or default_uri(identity.root)
        experiment = settings.experiment or identity.experiment
        local = not settings.tracking_uri
        try:
            with store_lock(identity.root) if local else contextlib.nullcontext():
                self.client = MlflowClient(tracking_uri=self.uri)
                experiment_id = self._experiment(experiment, identity.root / ARTIFACTS if local else None)
        except Exception as error:  # noqa: BLE001 - any failure to reach the store stops the run here
            raise ConfigError(f"settings.{SETTINGS_KEY}.tracking_uri: cannot open the MLflow store {self.uri} "
                              f"({type(error).__name__}: {error})") from None
        self.run_file = run.out.path / RUN_FILE
        self.run_id = self._reopen(experiment_id)
        self.new = self.run_id is None
        if self.new:
            tags = {**identity.tags, **settings.tags}
            created = self.client.create_run(experiment_id, run_name=settings.run_name or identity.name, tags=tags)
            self.run_id = created.info.run_id
            atomic.write_json(self.run_file, {"tracking_uri": self.uri, "experiment_id": experiment_id,
                                              "run_id": self.run_id})
        else:
            self.client.update_run(self.run_id, status="RUNNING")

    def _experiment(self, name: str, artifacts: Path | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                raise ConfigError(f"settings.{SETTINGS_KEY}.experiment: experiment {name!r} is deleted in {self.uri}; "
                                  f"restore it (mlflow experiments restore) or name another one")
            return found.experiment_id
        location = artifacts.resolve().as_uri() if artifacts is not None else None
        return self.client.create_experiment(name, artifact_location=location)

    def _reopen(self, experiment_id: str) -> str | None:
        """The run id `mlflow.json` keeps, if that run is still in this store and experiment."""
        try:
            stored = json.loads(self.run_file.read_text())
        except (OSError, ValueError):
            return None
        if stored.get("tracking_uri") != self.uri or stored.get("experiment_id") != experiment_id:
            return None
        try:
            found = self.client.get_run(stored["run_id"])
        except Exception:  # noqa: BLE001 - not in this store: start a new one
            return None
        return None if found.info.lifecycle_stage == "deleted" else found.info.run_id

    def logged(self, key: str) -> set[int]:
        return {metric.step for metric in self.client.get_metric_history(self.run_id, key)}

    def begin(self, resume_at: int | None, hyperparameters: dict[str, Any]) -> None:
        from mlflow.entities import Param

        have = self.client.get_run(self.run_id).data.params
        params = [Param(key, str(value)[:PARAM_LENGTH]) for key, value in hyperparameters.items() if key not in have]
        for start in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[start:start + BATCH])

    def log(self, entry: Entry) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, value, now, entry.step)
                                                    for key, value in entry.scalars.items()])

    def finish(self, entry: Entry, files: list[Path]) -> None:
        for path in files:
            self.client.log_artifact(self.run_id, str(path))
        self.log(entry)

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)


def observer(settings: MlflowSettings | None) -> Tracker | None:
    """The `ObserverSpec.factory`: a tracker when the pipeline has `[settings.mlflow]`, in the
    process that writes the run's files."""
    if settings is None or not writes_files():
        return None
    return Tracker(SETTINGS_KEY, settings, MlflowRun)
