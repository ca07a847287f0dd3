"""What registering the tracer needs, apart from the code that traces (which imports torch):
its name, its options (`TraceOptions`, also what `spur trace` can be told), its error, and
the choices the options validate against: criteria, interventions and rewinding offsets."""

from __future__ import annotations

from typing import Literal

import attrs

from spurcore.api import FieldError, SpurcoreError, non_negative, positive

CRITERIA = ("gradient", "magnitude", "loss-gradient")
KINDS = ("zero", "init", "noise")  # interventions
OFFSETS = (5, 10, 20, 30, 40)  # epochs to rewind a layer by
NAME = "memorization"  # the tracer's name in the registry (`spur trace --tracer memorization`, the default)


class TracerError(SpurcoreError):
    """The run cannot be traced as asked; the message says why and what to do."""


def _subset_of(choices: tuple[str, ...]):
    def check(instance, attribute, value):
        bad = [v for v in value if v not in choices]
        if bad or not value:
            raise FieldError(attribute.name, f"must be a non-empty list of {', '.join(choices)}; got {value}")
    return check


def _positive_ints(instance, attribute, value):
    if not value or any(int(v) != v or v < 1 for v in value):
        raise FieldError(attribute.name, f"must be a non-empty list of positive integers, got {value}")


def _non_negative_list(attribute, value):
    if not value or any(v < 0 for v in value):
        raise FieldError(attribute.name, f"must be a non-empty list of numbers >= 0, got {value}")


def _share(instance, attribute, value):
    if not 0 < value <= 1:
        raise FieldError(attribute.name, f"must be a share in (0, 1], got {value}")


def _epoch(instance, attribute, value):
    if not (value in ("last", "selected") or (isinstance(value, int) and value >= 0)):
        raise FieldError(attribute.name, f"must be 'last', 'selected' or an epoch number, got {value!r}")


@attrs.frozen(kw_only=True)
class TraceOptions:
    """Everything `spur trace` can be told; the defaults keep waterdigits to a few minutes."""

    stage: int = -1                                   # stage index; -1: the last stage
    epoch: int | str = attrs.field(default="last", validator=_epoch)  # "last", "selected" or N
    criteria: list[str] = attrs.field(factory=lambda: ["gradient", "magnitude"], validator=_subset_of(CRITERIA))
    k: list[int] = attrs.field(factory=lambda: [1, 2, 3], validator=_positive_ints)
    interventions: list[str] = attrs.field(factory=lambda: list(KINDS), validator=_subset_of(KINDS))
    sigma: list[float] = attrs.field(factory=lambda: [0.005], validator=lambda i, a, v: _non_negative_list(a, v))
    repeats: int = attrs.field(default=2, validator=positive)
    subset: Literal["lowest-confidence", "all"] = "lowest-confidence"
    subset_size: int = attrs.field(default=200, validator=positive)
    reduction: Literal["sum", "mean"] = "sum"
    include_bias: bool = True
    per_layer_k: list[int] = attrs.field(factory=lambda: [3])    # [] turns structured tracing off
    control: bool = True
    control_exclude_percent: float = attrs.field(default=10.0, validator=positive)
    rewind_offsets: list[int] = attrs.field(factory=lambda: list(OFFSETS))
    sensitive_threshold: float = attrs.field(default=1.0, validator=non_negative)
    overlap_percents: list[float] = attrs.field(factory=lambda: [0.01, 5.0])
    exclude: list[str] = attrs.field(factory=list)    # module paths (and their children) not traced
    memorized: str | None = None                      # a `spur memorization` scores.h5: its top-memorized
    memorized_share: float = attrs.field(default=0.05, validator=_share)  # training examples, one more row on train
    batch_size: int = attrs.field(default=1024, validator=positive)
    max_cache_mb: float = attrs.field(default=8192.0, validator=non_negative)  # on disk, see replay.py
    cache_dir: str | None = None                       # where; None: the system's temporary directory
    seed: int = 0
    figures: bool = True
