"""`[settings.activations]`: what a pipeline records, validated at `spurcore_run_start`.

    [settings.activations]
    modules = ["embed.block2", "embed"]   # model.named_modules() paths (required)
    splits = ["val", "test"]              # evaluated splits to record
    epochs = "all"                        # "all", "last", or a list such as [1, 5, 10]
    stages = "all"                        # "all", or a list of stage names
    reduce = "mean"                       # conv maps per channel: "mean", "max", "none" (flattened)
    path = "activations.h5"               # relative paths are inside the run directory
    compression = "lzf"                   # "lzf", or "gzip" (level 4, with shuffle)
"""

from __future__ import annotations

from typing import Literal

import attrs

from spurcore.api import FieldError, non_empty

SETTINGS_KEY = "activations"  # the observer's name, and its table: [settings.activations]


def _epochs(instance, attribute, value) -> None:
    if isinstance(value, list) and (not value or any(e < 0 for e in value)):
        raise FieldError(attribute.name, f"must be \"all\", \"last\" or a non-empty list of epochs >= 0, got {value}")


def _unique(instance, attribute, value) -> None:
    non_empty(instance, attribute, value)
    if len(set(value)) != len(value):
        raise FieldError(attribute.name, f"lists a name twice: {value}")


@attrs.frozen(kw_only=True)
class ActivationOptions:
    modules: list[str] = attrs.field(validator=_unique)
    splits: list[str] = attrs.field(factory=lambda: ["val", "test"], validator=_unique)
    epochs: Literal["all", "last"] | list[int] = attrs.field(default="all", validator=_epochs)
    stages: Literal["all"] | list[str] = "all"
    reduce: Literal["mean", "max", "none"] = "mean"
    path: str = "activations.h5"
    compression: Literal["lzf", "gzip"] = "lzf"
