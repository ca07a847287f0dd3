"""spurcore-mlflow: `[settings.mlflow]` logs a run to MLflow: per epoch the train loss and every
split's metrics (one per group), the resolved config as params, the selected epoch, and at the
run's end its figures, `summary.json`, `report.md` and `config.toml` as artifacts. By default
into the SQLite store `mlflow.db` next to the run; every trial of a sweep is a run of the
sweep's experiment, tagged with its method, settings and seed. The run's id is kept in
`<run>/mlflow.json`, so `spur run --resume` continues the same MLflow run. Built on
spurcore-tracking; the client code is `client.py`, imported only when a run uses it.
"""

from __future__ import annotations

from spurcore import hookimpl
from spurcore.api import ObserverSpec, lazy
from spurcore_mlflow.options import SETTINGS_KEY, MlflowSettings

__version__ = "0.1.0"
__all__ = ["MlflowSettings"]


@hookimpl
def spurcore_register_observers():
    return [ObserverSpec(name=SETTINGS_KEY, settings=MlflowSettings, factory=lazy("spurcore_mlflow.client:observer"),
                         description="MLflow runs (SQLite store next to the runs, or a server): metrics per epoch "
                                     "and group, params, artifacts; a sweep is one experiment")]
