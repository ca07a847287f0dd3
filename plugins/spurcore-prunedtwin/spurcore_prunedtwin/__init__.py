"""Pruned-twin contrastive fine-tuning ("The Silent Majority", Stage II; docs/methods/prunedtwin.md).

A train stage that fine-tunes the model it receives (ERM's, from an earlier stage or from
`[init]` at a kick-in epoch). At the start of every epoch it masks the top q of neurons (by
magnitude or by the gradient on high-loss training examples, scored with `spurcore_tracer`);
the pruned twin is the same model with that mask applied in its forward pass (shared weights).
The loss pulls the target's representation of one view towards the twin's representation of
another view of the same image (NT-Xent), plus lambda x MSE(softmax, one-hot y).
No attribute labels are read.
"""

from __future__ import annotations

from typing import Literal

import attrs

from spurcore import hookimpl
from spurcore.api import FieldError, MitigationSpec, lazy, lazy_exports, non_negative, positive

__all__ = [
    "NeuronMask", "PROJECTION", "PrunedTwinOptions", "PrunedTwinStage", "WeightMask", "augment", "distort_colour", "high_loss_batches",
    "alignment", "is_image_batch", "neuron_index", "neuron_mask", "nt_xent", "nt_xent_stopgrad", "smallest_weight_mask",
    "supervised", "two_views",
]
__getattr__, __dir__ = lazy_exports(__name__, {
    "PrunedTwinStage": "spurcore_prunedtwin.stage:PrunedTwinStage",
    "augment": "spurcore_prunedtwin.augment:augment",
    "distort_colour": "spurcore_prunedtwin.augment:distort_colour",
    "is_image_batch": "spurcore_prunedtwin.augment:is_image_batch",
    "two_views": "spurcore_prunedtwin.augment:two_views",
    "alignment": "spurcore_prunedtwin.loss:alignment",
    "nt_xent": "spurcore_prunedtwin.loss:nt_xent",
    "nt_xent_stopgrad": "spurcore_prunedtwin.loss:nt_xent_stopgrad",
    "supervised": "spurcore_prunedtwin.loss:supervised",
    "PROJECTION": "spurcore_prunedtwin.mask:PROJECTION",
    "NeuronMask": "spurcore_prunedtwin.mask:NeuronMask",
    "WeightMask": "spurcore_prunedtwin.mask:WeightMask",
    "high_loss_batches": "spurcore_prunedtwin.mask:high_loss_batches",
    "neuron_index": "spurcore_prunedtwin.mask:neuron_index",
    "neuron_mask": "spurcore_prunedtwin.mask:neuron_mask",
    "smallest_weight_mask": "spurcore_prunedtwin.mask:smallest_weight_mask",
})


def _open_fraction(instance, attribute, value) -> None:
    if not 0 < value <= 1:
        raise FieldError(attribute.name, f"must be in (0, 1], got {value}")


def _percent(instance, attribute, value) -> None:
    if not 0 < value <= 100:
        raise FieldError(attribute.name, f"must be in (0, 100], got {value}")


def _sample(instance, attribute, value) -> None:
    if value <= 0 or value > instance.pool:
        raise FieldError(attribute.name, f"must be in 1..pool ({instance.pool}), got {value}")


@attrs.frozen(kw_only=True)
class PrunedTwinOptions:
    """Paper defaults; the released code's departures are options (see README.md).

    `q`: fraction of neurons masked (0.0001 = 0.01%, at least one). `criterion`: how neurons
    are scored. `lam`: weight of the supervised term. `tau`: NT-Xent temperature.
    `projection`: a 2-layer projection head on the features (trained, never masked).
    `target`: the supervised term's input, "softmax" or "logits". `mask`: "neurons" (top q
    neurons) or "smallest-weights" (the smallest `weight_percent`% of individual weights).
    `same_view`: one augmented view on both branches. `augment`: false feeds both branches the
    clean image (a control). `colour`: add colour distortion to the views (not in the paper;
    see augment.py). `space`: "features" (NT-Xent on the penultimate features) or "output" (on
    the softmax outputs, symmetric with stop-gradient, no projection head); the head's units
    are never masked. `contrast`: "nt-xent", or, as controls, "positives" (alignment of each
    pair alone, 1 - cosine, without negatives) or "none" (the supervised term alone, on the
    first view). `supervised`: "mse" (the squared error summed
    over classes, the paper's ||y_hat - y||^2) or "ce". `pool`/`sample`: the gradient
    criterion's `sample` examples drawn from the `pool` highest-loss training examples.
    """

    q: float = attrs.field(default=0.0001, validator=_open_fraction)
    criterion: Literal["magnitude", "gradient"] = "magnitude"
    lam: float = attrs.field(default=0.2, validator=non_negative)
    tau: float = attrs.field(default=0.5, validator=positive)
    projection: bool = True
    projection_dim: int = attrs.field(default=128, validator=positive)
    target: Literal["softmax", "logits"] = "softmax"
    mask: Literal["neurons", "smallest-weights"] = "neurons"
    weight_percent: float = attrs.field(default=1.0, validator=_percent)
    same_view: bool = False
    augment: bool = True
    colour: bool = False
    space: Literal["features", "output"] = "features"
    contrast: Literal["nt-xent", "positives", "none"] = "nt-xent"
    supervised: Literal["mse", "ce"] = "mse"
    pool: int = attrs.field(default=256, validator=positive)
    sample: int = attrs.field(default=128, validator=_sample)
    seed: int = 0

    def __attrs_post_init__(self) -> None:
        if self.space == "output" and self.projection:
            raise FieldError("projection", "output-space NT-Xent has no projection head: set projection = false")


@hookimpl
def spurcore_register_mitigations():
    return [MitigationSpec(
        name="prunedtwin", kind="train", options=PrunedTwinOptions, factory=lazy("spurcore_prunedtwin.stage:PrunedTwinStage"),
        train_defaults={"optimizer": "adam", "lr": 2e-4, "weight_decay": 0.0, "scheduler": "plateau", "epochs": 20},
        search_space={"q": [0.0001, 0.001, 0.01], "lam": [0.0, 0.2, 0.5, 1.0], "criterion": ["magnitude", "gradient"]},
        fine_tunes=True,
        description="pruned-twin contrastive fine-tuning: NT-Xent against a masked twin sharing the weights",
    )]


@hookimpl
def spurcore_register_commands(cli):
    from spurcore_prunedtwin.command import gradcam_cmd

    cli.add_command(gradcam_cmd)
