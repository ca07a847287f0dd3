"""spurcore-tensorboard: `[settings.tensorboard]` writes a run's TensorBoard event files into
`<run>/tensorboard/`: per epoch the train loss and every split's metrics (one scalar per
group), the resolved config as hyperparameters and text, the selected epoch, and at the run's
end its figures (images), `summary.json` and `report.md` (text). Built on spurcore-tracking;
the writer is `writer.py`, imported only when a run uses it.
"""

from __future__ import annotations

from spurcore import hookimpl
from spurcore.api import ObserverSpec, lazy
from spurcore_tensorboard.options import SETTINGS_KEY, TensorBoardSettings

__version__ = "0.1.0"
__all__ = ["TensorBoardSettings"]


@hookimpl
def spurcore_register_observers():
    return [ObserverSpec(name=SETTINGS_KEY, settings=TensorBoardSettings,
                         factory=lazy("spurcore_tensorboard.writer:observer"),
                         description="TensorBoard event files in the run: per-epoch and per-group scalars, "
                                     "hyperparameters, figures")]
