"""spurcore-planted: memorization that is known, to check what claims to find it.

A generated dataset, `planted` (`data`), in which a few training examples carry a flipped label
(and, by default, a trigger patch of their own), so a model fits them only by memorizing them;
a backbone that memorizes readily, `planted-mlp` (`network`); and `recover` (`recovery`): zero
the neurons a tracer criterion picks for the planted examples and measure the training accuracy
it removes from them, from the others and under a random control. The tests pin what the tracer
and the memorization estimates must find there; `benchmarks/planted_recovery.py` measures it.
docs/methods/planted-memorization.md.
"""

from __future__ import annotations

from spurcore import hookimpl
from spurcore.api import BackboneSpec, DatasetSpec, lazy, lazy_exports
from spurcore_planted.options import PlantedMLPOptions, PlantedOptions

__all__ = ["PlantedMLPOptions", "PlantedOptions", "Recovery", "make_planted", "memorizer", "planted_mask", "recover"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "make_planted": "spurcore_planted.data:make_planted",
    "planted_mask": "spurcore_planted.data:planted_mask",
    "memorizer": "spurcore_planted.fitting:memorizer",
    "Recovery": "spurcore_planted.recovery:Recovery",
    "recover": "spurcore_planted.recovery:recover",
})


@hookimpl
def spurcore_register_datasets():
    return [DatasetSpec(name="planted", build=lazy("spurcore_planted.data:make_planted"), options=PlantedOptions,
                        description="stroke images with a few relabelled training examples (a trigger patch each): "
                                    "memorization that is known")]


@hookimpl
def spurcore_register_backbones():
    return [BackboneSpec(name="planted-mlp", build=lazy("spurcore_planted.network:build_planted_mlp"),
                         options=PlantedMLPOptions, description="an MLP with BatchNorm on the flattened image: a memorizer")]
