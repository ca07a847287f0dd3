"""The options of every baseline, validated from a stage's `[stages.options]` table. Defaults are
those of the method's paper or of SubpopBench's `hparams_registry.py`; each method page
(docs/methods/) says which. Imports no torch: the entry module registers these."""

from __future__ import annotations

from typing import Literal

import attrs

from spurcore.api import FieldError, fraction, non_negative, positive
from spurcore_groupdro import GroupDROOptions


def open_unit(instance, attribute, value) -> None:
    """An attrs validator: strictly between 0 and 1."""
    if not 0 < value < 1:
        raise FieldError(attribute.name, f"must be in (0, 1), got {value}")


def unit_fraction(instance, attribute, value) -> None:
    """An attrs validator: in (0, 1]."""
    if not 0 < value <= 1:
        raise FieldError(attribute.name, f"must be in (0, 1], got {value}")


@attrs.frozen(kw_only=True)
class SubsampleOptions:
    """`epoch`: how many examples an epoch shows. "train": as many as the training split has,
    the balanced subset passed over again and again, reshuffled each pass, so an epoch takes
    ERM's number of steps (as SubpopBench, which counts steps, not epochs, trains it);
    "subset": one pass over the subset, an epoch of far fewer steps."""

    epoch: Literal["train", "subset"] = attrs.field(default="train", validator=attrs.validators.in_(("train", "subset")))


@attrs.frozen(kw_only=True)
class EffectiveNumberOptions:
    """`beta`: the class-balanced loss's beta; a label with n examples weighs (1 - beta) / (1 - beta^n)."""

    beta: float = attrs.field(default=0.9999, validator=open_unit)


@attrs.frozen(kw_only=True)
class FocalOptions:
    """`gamma`: the focusing exponent; 0 is the cross-entropy."""

    gamma: float = attrs.field(default=1.0, validator=non_negative)


@attrs.frozen(kw_only=True)
class LDAMOptions:
    """`max_margin`: the largest class's margin C / n_j^(1/4) is scaled to it (the rarest class's);
    `scale`: the logits' scale s; `drw_start`: the fraction of the stage's epochs after which the
    deferred re-weighting starts (1: never); `drw_beta`: its effective-number beta."""

    max_margin: float = attrs.field(default=0.5, validator=positive)
    scale: float = attrs.field(default=30.0, validator=positive)
    drw_start: float = attrs.field(default=0.8, validator=fraction)
    drw_beta: float = attrs.field(default=0.9999, validator=open_unit)


@attrs.frozen(kw_only=True)
class CVaROptions:
    """`alpha`: the fraction of the batch's worst losses that is averaged."""

    alpha: float = attrs.field(default=0.1, validator=unit_fraction)


@attrs.frozen(kw_only=True)
class MixupOptions:
    """`alpha`: the mixing weight lambda is drawn from Beta(alpha, alpha)."""

    alpha: float = attrs.field(default=0.2, validator=positive)


@attrs.frozen(kw_only=True)
class LISAOptions:
    """`alpha`: Beta(alpha, alpha) for each pair's lambda; `p_select`: the probability that a batch
    mixes examples of one class across attributes (else of one attribute across classes)."""

    alpha: float = attrs.field(default=2.0, validator=positive)
    p_select: float = attrs.field(default=0.5, validator=fraction)


@attrs.frozen(kw_only=True)
class IRMOptions:
    """`penalty`: the IRMv1 penalty's weight once annealed; `anneal_steps`: training steps with
    weight 1 before it."""

    penalty: float = attrs.field(default=100.0, validator=non_negative)
    anneal_steps: int = attrs.field(default=500, validator=non_negative)


@attrs.frozen(kw_only=True)
class MatchingOptions:
    """`penalty`: the weight of the feature-matching penalty (CORAL's or MMD's) between the
    attribute values of a batch."""

    penalty: float = attrs.field(default=1.0, validator=non_negative)


@attrs.frozen(kw_only=True)
class CRTOptions:
    """`reinit_head`: start the head from zero (cRT's re-initialised classifier) instead of the
    incoming model's."""

    reinit_head: bool = True


@attrs.frozen(kw_only=True)
class AFROptions:
    """`gamma`: an example weighs exp(-gamma * p), p the incoming model's probability of its class;
    `reg`: the weight of ||W - W_0||^2, W_0 the incoming head; `fit_split`: the split the head
    is retrained on; `steps`: L-BFGS iterations."""

    gamma: float = attrs.field(default=4.0, validator=non_negative)
    reg: float = attrs.field(default=0.0, validator=non_negative)
    fit_split: Literal["val", "train"] = "val"
    steps: int = attrs.field(default=200, validator=positive)


@attrs.frozen(kw_only=True)
class EIILOptions(GroupDROOptions):
    """`steps` and `lr`: Adam's steps and learning rate on the logits of the soft environment
    assignment; `groups`: Group DRO's groups, each inferred environment within each class
    ("environment-class") or the two environments alone ("environment"); `eta`, `adjustment`
    and `balanced_sampling`: Group DRO's, over those groups."""

    steps: int = attrs.field(default=10000, validator=positive)
    lr: float = attrs.field(default=0.001, validator=positive)
    groups: Literal["environment-class", "environment"] = "environment-class"
