"""The basic backbones: `small-cnn` (fast on two CPU cores), torchvision ResNets and ViT-B/16.

ResNet weights never download: pretrained weights come from the local torch hub cache or
from a file named in the pipeline, and their absence is an error that says how to proceed.
This module holds their options and registration; the networks are built in
`spurcore.builtins.networks`, imported when a pipeline builds one.
"""

from __future__ import annotations

from typing import Any

import attrs

from spurcore.config import FieldError, positive
from spurcore.hookspecs import hookimpl
from spurcore.lazy import lazy
from spurcore.specs import BackboneSpec


def _pretrained_source(instance: Any, attribute: attrs.Attribute, value: str) -> None:
    if value not in PRETRAINED_SOURCES:
        raise FieldError(attribute.name, f"{value!r} is not one of {', '.join(map(repr, PRETRAINED_SOURCES))}")


PRETRAINED_SOURCES = ("", "digits")


@attrs.frozen(kw_only=True)
class SmallCNNOptions:
    """`blocks` conv blocks (conv-BN-ReLU), channels doubling from `width`, 2x2 max pooling after
    every block but the last (`pool_last = true`: after the last too), then global average
    pooling. The defaults (3 blocks, last unpooled) see the whole of a 28-pixel digit; larger
    images need more blocks or pooling before a feature spans the object (at 32-48 px, 4 blocks
    with `pool_last` learn a bird's shape where 3 blocks learn only the background texture).
    `expand = N`: a last 1 x 1 conv block (`expand`, conv-BN-ReLU) widening the features to N
    channels before the pooling, as ResNet-50's bottlenecks widen to 2,048; it gives a cheap
    network ResNet-50's feature width (the scale benchmarks use `expand = 2048`). 0: none.
    `pretrained = "digits"`: start from weights pretrained on the ten-digit task of
    `spurcore.builtins.digits_pretraining` (built once, offline, and cached)."""

    width: int = attrs.field(default=32, validator=positive)
    blocks: int = attrs.field(default=3, validator=positive)
    pool_last: bool = False
    expand: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    pretrained: str = attrs.field(default="", validator=_pretrained_source)

    @property
    def feature_dim(self) -> int:
        return self.expand or self.width * 2 ** (self.blocks - 1)


@attrs.frozen(kw_only=True)
class ResNetOptions:
    """`pretrained = true` loads ImageNet weights (torchvision's DEFAULT) from the torch hub
    cache; `weights` names a state-dict file instead. Default: random initialisation."""

    pretrained: bool = False
    weights: str = ""


def _torchvision(arch: str) -> Any:
    return lazy("spurcore.builtins.networks:build_torchvision", arch=arch)


@hookimpl
def spurcore_register_backbones():
    return [
        BackboneSpec(name="small-cnn", build=lazy("spurcore.builtins.networks:build_small_cnn"), options=SmallCNNOptions,
                     description="conv blocks with BN and max pooling (3 by default, width x 2^(blocks-1) features, or `expand` after a 1x1 widening block); seconds per epoch on a CPU; pretrained = \"digits\" starts from offline digit pretraining"),
        BackboneSpec(name="resnet18", build=_torchvision("resnet18"), options=ResNetOptions,
                     description="torchvision ResNet-18, 512 features"),
        BackboneSpec(name="resnet50", build=_torchvision("resnet50"), options=ResNetOptions,
                     description="torchvision ResNet-50 (ImageNet weights IMAGENET1K_V2), 2048 features"),
        BackboneSpec(name="vit-b-16", build=_torchvision("vit_b_16"), options=ResNetOptions,
                     description="torchvision ViT-B/16, 768 features; pretrained weights need 224 x 224 images"),
    ]
