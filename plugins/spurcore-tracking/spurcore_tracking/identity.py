"""Which tracked run a spurcore run is: its name, its tags, and where local stores live.

A sweep's trial (its run folder's `origin.json`, which the sweep writes before the trial
starts, names its sweep, method, settings and seed) is named by its path in the sweep (`dfr/retrains=5-1a2b3c4d/seed0`), tagged with its method,
settings and seed, filed under an experiment named after the sweep folder, and its local
store sits in the sweep folder, so every trial of a sweep is one run of one experiment. Any
other run is named after its folder, and its local store sits next to it (the run folder's
parent).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs


DEFAULT_EXPERIMENT = "spurcore"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


@attrs.frozen(kw_only=True)
class Identity:
    name: str
    experiment: str
    root: Path  # the folder embedded stores go in: the sweep's, or the run folder's parent
    tags: dict[str, str]

    @classmethod
    def of(cls, run: Any) -> Identity:
        path = run.out.path.resolve()
        config = run.config
        tags = {
            "run_dir": str(path),
            "dataset": config.dataset.name,
            "backbone": config.backbone.name,
            "stages": "+".join(stage.label for stage in config.stages),
            "method": "+".join(stage.label for stage in config.stages),
            "seed": str(config.seed),
        }
        origin = run.out.read_origin()
        if origin is None or "sweep" not in origin:
            return cls(name=path.name, experiment=DEFAULT_EXPERIMENT, root=path.parent, tags=tags)
        sweep, settings = Path(origin["sweep"]), origin.get("settings", {})
        tags.update({"sweep": str(sweep), "trial": origin["trial"], "method": origin["method"],
                     "seed": str(origin["seed"]),
                     "settings": ", ".join(f"{k}={_text(v)}" for k, v in settings.items()) or "default"})
        tags.update({f"setting.{key}": _text(value) for key, value in settings.items()})
        return cls(name=origin["trial"], experiment=sweep.name, root=sweep, tags=tags)
