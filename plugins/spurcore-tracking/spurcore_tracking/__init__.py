"""spurcore-tracking: what spurcore's experiment trackers log of a run, for the tracker plugins
(spurcore-tensorboard, spurcore-mlflow) to share. A library: it registers nothing.

* `records`: the entries (scalars at a step) a run's records hold, their names, the resolved
  config as hyperparameters, the files a finished run hands over;
* `identity`: a tracked run's name, tags and local store folder (a sweep's trial: one run of
  the sweep's experiment, tagged with its method, settings and seed);
* `tracker`: the observer, `Tracker(name, settings, connect)`, which logs whatever the
  records hold and the tracker does not, so a resumed run continues its tracked run;
* `testing`: runs cut as a crash or a kill would cut them, for the trackers' tests.
"""

from __future__ import annotations

from spurcore.api import lazy_exports

__version__ = "0.1.0"
__all__ = ["Entry", "Identity", "Tracker", "flatten_metrics", "hyperparameters", "scalar_name", "testing"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "Entry": "spurcore_tracking.records:Entry",
    "flatten_metrics": "spurcore_tracking.records:flatten_metrics",
    "hyperparameters": "spurcore_tracking.records:hyperparameters",
    "scalar_name": "spurcore_tracking.records:scalar_name",
    "Identity": "spurcore_tracking.identity:Identity",
    "Tracker": "spurcore_tracking.tracker:Tracker",
    "testing": "spurcore_tracking.testing",
})
