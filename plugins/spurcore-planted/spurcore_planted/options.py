"""What registering the plugin needs, apart from the code that builds (which imports torch):
the options of the dataset `planted` and of the backbone `planted-mlp`."""

from __future__ import annotations

from typing import Literal

import attrs

from spurcore.api import FieldError, positive

KINDS = ("patch", "relabel")
CLASSES = ("horizontal", "vertical")
ATTRIBUTES = ("clean", "planted")
TRIGGER = 3  # the trigger's side, pixels


def _at_least_two(instance, attribute, value):
    if value < 2:
        raise FieldError(attribute.name, f"must be at least 2 (one planted example of each class), got {value}")


@attrs.frozen(kw_only=True)
class PlantedOptions:
    """`n_train` training examples of which `planted` are planted (`kind`: "patch" or
    "relabel"); `n_eval` examples in val and in test, `planted` of them planted too; images
    `side` pixels square with Gaussian noise of std `noise`; `seed` draws everything."""

    n_train: int = attrs.field(default=400, validator=positive)
    planted: int = attrs.field(default=8, validator=_at_least_two)
    kind: Literal["patch", "relabel"] = "patch"
    n_eval: int = attrs.field(default=200, validator=positive)
    side: int = attrs.field(default=8, validator=positive)
    noise: float = 0.2
    seed: int = 0

    def __attrs_post_init__(self) -> None:
        if self.kind not in KINDS:
            raise FieldError("kind", f"must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.side < TRIGGER + 1:
            raise FieldError("side", f"must be at least {TRIGGER + 1} (the trigger is {TRIGGER} pixels), got {self.side}")
        for name, n in (("n_train", self.n_train), ("n_eval", self.n_eval)):
            if self.planted * 2 > n:
                raise FieldError("planted", f"{self.planted} planted examples: at most half of {name} ({n})")


@attrs.frozen(kw_only=True)
class PlantedMLPOptions:
    """`layers` blocks of Linear -> BatchNorm -> ReLU of `hidden` units each."""

    hidden: int = attrs.field(default=64, validator=positive)
    layers: int = attrs.field(default=2, validator=positive)
