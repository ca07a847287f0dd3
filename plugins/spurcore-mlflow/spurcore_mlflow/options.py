"""`[settings.mlflow]`, validated when the pipeline is planned, before the run starts.

    [settings.mlflow]
    tracking_uri = ""    # "" : the embedded SQLite store, mlflow.db next to the run (a sweep's:
                         #      in the sweep folder); or a server, "http://host:5000", or any
                         #      MLflow store URI ("sqlite:///path/mlflow.db")
    experiment = ""      # "" : the sweep folder's name for a sweep's trials, else "spurcore"
    run_name = ""        # "" : the trial's path in its sweep, else the run folder's name
    tags = {}            # more tags for the run, e.g. {project = "waterbirds"}
"""

from __future__ import annotations

import re

import attrs

from spurcore.api import FieldError

SETTINGS_KEY = "mlflow"  # the observer's name, and its table: [settings.mlflow]
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _uri(instance, attribute, value: str) -> None:
    if value and not _URI.match(value):
        raise FieldError(attribute.name, f"{value!r} is not a URI (http://host:5000, sqlite:///path/mlflow.db, "
                                         f"file:///path); leave it empty for the store next to the runs")


@attrs.frozen(kw_only=True)
class MlflowSettings:
    tracking_uri: str = attrs.field(default="", validator=_uri)
    experiment: str = ""
    run_name: str = ""
    tags: dict[str, str] = attrs.field(factory=dict)
