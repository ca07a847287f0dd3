"""The baselines users compare against (issue 28), as spurcore stages: the imbalanced-learning,
augmentation, invariance and last-layer methods of SubpopBench and the common group-robustness
baselines (EIIL, which infers its groups, among them), each with its paper's or SubpopBench's
settings and search space.

Which labels each reads is in its spec: a method that balances or weights *groups* (class x
attribute) reads the training split's attribute labels; one that balances *classes* reads none.

| concept | module | methods |
|---|---|---|
| per-label counts and weights | `weights` | (shared) |
| losses and logit adjustments | `losses` | (shared) |
| the order of training examples | `sampling` | resample, resample-class, subg, suby |
| the loss of each example | `weighted` | reweight, reweight-class, sqrt-reweight, cbloss, focal, ldam, bsoftmax, cvar-dro |
| mixing examples | `mixing` | mixup, lisa |
| invariance across attribute values | `invariance` | irm, coral, mmd |
| the last layer on frozen features | `lastlayer` | crt, crt-class, reweight-crt, afr |
| groups inferred from the incoming model | `inferred` | eiil |

This module imports no torch: it registers the specs, naming each stage object with `lazy`.
"""

from __future__ import annotations

from spurcore import hookimpl
from spurcore.api import MitigationSpec, lazy, lazy_exports
from spurcore_baselines.options import (
    AFROptions, CRTOptions, CVaROptions, EffectiveNumberOptions, EIILOptions, FocalOptions, IRMOptions, LDAMOptions,
    LISAOptions, MatchingOptions, MixupOptions, SubsampleOptions,
)

EXPORTS = {
    **{name: f"spurcore_baselines.weights:{name}" for name in (
        "train_labels", "label_counts", "inverse_frequency", "effective_number")},
    **{name: f"spurcore_baselines.losses:{name}" for name in (
        "focal_loss", "ldam_margins", "subtract_margin", "log_priors", "cvar", "soft_cross_entropy")},
    **{name: f"spurcore_baselines.mixing:{name}" for name in ("lisa_partners", "mixed_targets")},
    **{name: f"spurcore_baselines.invariance:{name}" for name in ("irm_penalty", "coral_distance", "mmd_distance")},
    **{name: f"spurcore_baselines.lastlayer:{name}" for name in ("afr_weights", "fit_head")},
    **{name: f"spurcore_baselines.inferred:{name}" for name in ("infer_environments", "environment_penalties")},
}
__all__ = [
    "AFROptions", "CRTOptions", "CVaROptions", "EffectiveNumberOptions", "EIILOptions", "FocalOptions", "IRMOptions",
    "LDAMOptions", "LISAOptions", "MatchingOptions", "MixupOptions", "reads", "specs",
    "afr_weights", "coral_distance", "cvar", "effective_number", "environment_penalties", "fit_head", "focal_loss",
    "infer_environments", "inverse_frequency", "irm_penalty", "label_counts", "ldam_margins", "lisa_partners", "log_priors", "mixed_targets", "mmd_distance",
    "soft_cross_entropy", "subtract_margin", "train_labels",
]
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)

TRAIN = ("train",)


def reads(by: str) -> tuple[str, ...]:
    """The splits whose attribute labels a method balancing `by` "group" or "class" reads."""
    return TRAIN if by == "group" else ()


def specs() -> list[MitigationSpec]:
    """Every baseline's spec, in the order `spur list` shows them (by name)."""
    out = []
    for by, suffix, what in (("group", "", "group"), ("class", "-class", "class")):
        out += [
            MitigationSpec(
                name=f"resample{suffix}", factory=lazy("spurcore_baselines.sampling:Resample", by=by),
                needs_attributes=reads(by),
                description=f"ReSample: {what}-balanced draws of the training set, with replacement"),
            MitigationSpec(
                name=f"reweight{suffix}", factory=lazy("spurcore_baselines.weighted:Reweight", by=by, power=1.0),
                needs_attributes=reads(by),
                description=f"ReWeight: cross-entropy weighted by the inverse {what} frequency"),
        ]
    out += [
        MitigationSpec(
            name="subg", options=SubsampleOptions, factory=lazy("spurcore_baselines.sampling:Subsample", by="group"), needs_attributes=TRAIN,
            description="SUBG: train on a group-balanced subsample (every group cut to the smallest)"),
        MitigationSpec(
            name="suby", options=SubsampleOptions, factory=lazy("spurcore_baselines.sampling:Subsample", by="class"),
            description="SUBY: train on a class-balanced subsample (every class cut to the smallest)"),
        MitigationSpec(
            name="sqrt-reweight", factory=lazy("spurcore_baselines.weighted:Reweight", by="group", power=0.5),
            needs_attributes=TRAIN,
            description="SqrtReWeight: cross-entropy weighted by the inverse square root of the group frequency"),
        MitigationSpec(
            name="cbloss", options=EffectiveNumberOptions, factory=lazy("spurcore_baselines.weighted:ClassBalanced"),
            needs_attributes=TRAIN, search_space={"beta": [0.99, 0.999, 0.9999, 0.99999]},
            description="CBLoss: cross-entropy weighted by each group's inverse effective number (1 - beta^n) / (1 - beta)"),
        MitigationSpec(
            name="focal", options=FocalOptions, factory=lazy("spurcore_baselines.weighted:Focal"),
            search_space={"gamma": [0.5, 1.0, 2.0, 5.0]},
            description="Focal loss: the cross-entropy scaled by (1 - p_y)^gamma"),
        MitigationSpec(
            name="ldam", options=LDAMOptions, factory=lazy("spurcore_baselines.weighted:LDAM"),
            search_space={"max_margin": [0.1, 0.3, 0.5], "scale": [10.0, 30.0]},
            description="LDAM: class margins proportional to n_j^-1/4, then deferred class re-weighting (DRW)"),
        MitigationSpec(
            name="bsoftmax", factory=lazy("spurcore_baselines.weighted:BalancedSoftmax"),
            description="Balanced softmax: the log class priors added to the logits in training"),
        MitigationSpec(
            name="cvar-dro", options=CVaROptions, factory=lazy("spurcore_baselines.weighted:CVaRDRO"),
            search_space={"alpha": [0.01, 0.03, 0.1, 0.3]},
            description="CVaR DRO: the mean of the worst alpha fraction of each batch's losses"),
        MitigationSpec(
            name="mixup", options=MixupOptions, factory=lazy("spurcore_baselines.mixing:Mixup"),
            search_space={"alpha": [0.1, 0.2, 1.0, 4.0]},
            description="Mixup: train on convex combinations of pairs of examples and of their labels"),
        MitigationSpec(
            name="lisa", options=LISAOptions, factory=lazy("spurcore_baselines.mixing:LISA"), needs_attributes=TRAIN,
            search_space={"alpha": [0.5, 2.0, 8.0], "p_select": [0.0, 0.5, 1.0]},
            description="LISA: mixup within a class across attributes, or within an attribute across classes"),
        MitigationSpec(
            name="irm", options=IRMOptions, factory=lazy("spurcore_baselines.invariance:IRM"), needs_attributes=TRAIN,
            search_space={"penalty": [1.0, 100.0, 10000.0], "anneal_steps": [10, 100, 1000]},
            description="IRMv1: cross-entropy plus the invariance penalty, each attribute value an environment"),
        MitigationSpec(
            name="coral", options=MatchingOptions, factory=lazy("spurcore_baselines.invariance:Matching", kernel="coral"),
            needs_attributes=TRAIN, search_space={"penalty": [0.1, 1.0, 10.0]},
            description="CORAL: match the features' means and covariances across the attribute values"),
        MitigationSpec(
            name="mmd", options=MatchingOptions, factory=lazy("spurcore_baselines.invariance:Matching", kernel="mmd"),
            needs_attributes=TRAIN, search_space={"penalty": [0.1, 1.0, 10.0]},
            description="MMD: match the features' distributions across the attribute values (Gaussian kernels)"),
        MitigationSpec(
            name="crt", options=CRTOptions, factory=lazy("spurcore_baselines.lastlayer:CRT", by="group"),
            needs_attributes=TRAIN, fine_tunes=True,
            description="CRT: retrain the last layer of a trained model on group-balanced draws"),
        MitigationSpec(
            name="crt-class", options=CRTOptions, factory=lazy("spurcore_baselines.lastlayer:CRT", by="class"),
            fine_tunes=True,
            description="cRT: retrain the last layer of a trained model on class-balanced draws"),
        MitigationSpec(
            name="reweight-crt", options=CRTOptions, factory=lazy("spurcore_baselines.lastlayer:ReweightCRT"),
            needs_attributes=TRAIN, fine_tunes=True,
            description="ReWeightCRT: retrain the last layer of a trained model, weighted by inverse group frequency"),
        MitigationSpec(
            name="afr", kind="posthoc", options=AFROptions, factory=lazy("spurcore_baselines.lastlayer:AFR"),
            search_space={"gamma": [0.0, 2.0, 4.0, 8.0, 16.0], "reg": [0.0, 0.1, 0.4]},
            description="AFR: refit the last layer with examples weighted by the incoming model's errors"),
        MitigationSpec(
            name="eiil", options=EIILOptions, factory=lazy("spurcore_baselines.inferred:EIIL"),
            fine_tunes=True,  # it reads the incoming model: comparisons start it from the baseline run
            search_space={"steps": [10000, 20000], "lr": [0.001, 0.01], "eta": [0.001, 0.01, 0.1]},
            description="EIIL: infer two environments that maximise the IRMv1 penalty of the incoming model, "
                        "retrain with Group DRO over them"),
    ]
    return sorted(out, key=lambda spec: spec.name)


@hookimpl
def spurcore_register_mitigations():
    return specs()
