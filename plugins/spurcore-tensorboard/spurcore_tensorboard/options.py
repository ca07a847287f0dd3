"""`[settings.tensorboard]`, validated when the pipeline is planned, before the run starts.

    [settings.tensorboard]
    logdir = "tensorboard"   # inside the run directory: `tensorboard --logdir RUNS` finds every run
"""

from __future__ import annotations

from pathlib import PurePosixPath, PureWindowsPath

import attrs

from spurcore.api import FieldError

SETTINGS_KEY = "tensorboard"  # the observer's name, and its table: [settings.tensorboard]


def _inside_the_run(instance, attribute, value: str) -> None:
    parts = PurePosixPath(value).parts
    if not value or PurePosixPath(value).is_absolute() or PureWindowsPath(value).is_absolute() or ".." in parts:
        raise FieldError(attribute.name, f"must be a folder inside the run directory (a relative path without "
                                         f"'..'), got {value!r}; point `tensorboard --logdir` at the runs' parent "
                                         f"to see several runs")


@attrs.frozen(kw_only=True)
class TensorBoardSettings:
    logdir: str = attrs.field(default="tensorboard", validator=_inside_the_run)
