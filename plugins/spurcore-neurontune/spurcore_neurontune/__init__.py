"""NeuronTune: find embedding dimensions whose activation goes with misclassification in every
class, zero them, and retrain the head with class-balanced sampling (docs/methods/neurontune.md).
SFit, the sum of |delta|, chooses among models without group labels."""

from __future__ import annotations

from typing import Literal

import attrs

from spurcore import hookimpl
from spurcore.api import (FieldError, MitigationSpec, SelectorSpec, SpurcoreError, lazy, lazy_exports, non_negative,
                          positive)

__all__ = [
    "NeuronTune", "NeuronTuneError", "NeuronTuneOptions", "above_per_class", "bias_dimensions", "check_splits", "predictions",
    "retrain_head", "sfit", "sfit_score", "spuriousness",
]
__getattr__, __dir__ = lazy_exports(__name__, {
    name: f"spurcore_neurontune.stage:{name}"
    for name in ("NeuronTune", "above_per_class", "bias_dimensions", "predictions", "retrain_head", "sfit",
                 "sfit_score", "spuriousness")})


class NeuronTuneError(SpurcoreError):
    pass


def _identification(instance, attribute, value) -> None:
    if value == "train" and not instance.force_train_identification:
        raise FieldError(attribute.name, (
            "refusing the training set: the model has memorized it, so its few misclassified "
            "training examples say little about bias (NeuronTune finds it fails); use \"val\", or "
            "set force_train_identification = true"
        ))


@attrs.frozen(kw_only=True)
class NeuronTuneOptions:
    force_train_identification: bool = False
    identification_split: str = attrs.field(default="val", validator=_identification)
    tuning_split: str = "train"
    quantifier: Literal["all", "any"] = "all"
    threshold: float = 0.0
    epochs: int = attrs.field(default=20, validator=positive)
    batch_size: int = attrs.field(default=128, validator=positive)
    lr: float = attrs.field(default=1e-3, validator=positive)
    weight_decay: float = attrs.field(default=1e-4, validator=non_negative)
    seed: int = 0


def check_splits(options: NeuronTuneOptions, data, model) -> None:
    """Both splits must exist, before the run trains anything."""
    for key in ("identification_split", "tuning_split"):
        split = getattr(options, key)
        if split not in data.splits:
            raise NeuronTuneError(f"{key}: dataset {data.name!r} has no split {split!r} ({', '.join(data.splits)})")


@hookimpl
def spurcore_register_mitigations():
    return [MitigationSpec(
        name="neurontune", kind="posthoc", options=NeuronTuneOptions,
        factory=lazy("spurcore_neurontune.stage:NeuronTune"), check=check_splits,
        # the head retrained on the training split (the paper's) or on val (as the authors do
        # when the training set is memorized); the labels of both are class labels only
        search_space={"quantifier": ["all", "any"], "threshold": [0.0, 0.1], "tuning_split": ["train", "val"]},
        description="NeuronTune: zero the bias dimensions, retrain the head class-balanced",
    )]


@hookimpl
def spurcore_register_selectors():
    return [SelectorSpec(name="sfit", score=lazy("spurcore_neurontune.stage:sfit_score"),
                         description="SFit: sum of |spuriousness| on val")]
