"""The basic backbones: `small-cnn` (fast on two CPU cores), torchvision ResNets and ViT-B/16.

ResNet weights never download: pretrained weights come from the local torch hub cache or
from a file named in the pipeline, and their absence is an error that says how to proceed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from spurcore.config import FieldError, positive
from spurcore.errors import SpurcoreError
from spurcore.hookspecs import hookimpl
from spurcore.model import Backbone
from spurcore.specs import BackboneSpec


class BackboneError(SpurcoreError):
    pass


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
    `pretrained = "digits"`: start from weights pretrained on the ten-digit task of
    `spurcore.builtins.digits_pretraining` (built once, offline, and cached)."""

    width: int = attrs.field(default=32, validator=positive)
    blocks: int = attrs.field(default=3, validator=positive)
    pool_last: bool = False
    pretrained: str = attrs.field(default="", validator=_pretrained_source)

    @property
    def feature_dim(self) -> int:
        return self.width * 2 ** (self.blocks - 1)


class SmallCNN(nn.Module):
    """`blocks` conv blocks (`block1`, `block2`, ...) and global average pooling."""

    def __init__(self, in_channels: int = 3, width: int = 32, blocks: int = 3, pool_last: bool = False) -> None:
        super().__init__()
        channels = in_channels
        for i in range(blocks):
            out = width * 2**i
            layers = [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            if i < blocks - 1 or pool_last:
                layers.append(nn.MaxPool2d(2))
            self.add_module(f"block{i + 1}", nn.Sequential(*layers))
            channels = out
        self.blocks = blocks
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.blocks):
            x = getattr(self, f"block{i + 1}")(x)
        return self.pool(x).flatten(1)


def build_small_cnn(options: SmallCNNOptions, data) -> Backbone:
    channels = data.input_shape[0] if data.input_shape else 3
    if data.input_shape and len(data.input_shape) == 3:
        side = min(data.input_shape[1:])
        pools = options.blocks - (0 if options.pool_last else 1)
        if side < 2**pools:
            raise BackboneError(
                f"small-cnn: {options.blocks} blocks pool {pools} times, which needs images of at least "
                f"{2**pools} pixels; dataset {data.name!r} has {side}. Use fewer blocks or larger images"
            )
    net = SmallCNN(channels, options.width, options.blocks, options.pool_last)
    if options.pretrained:
        from spurcore.builtins import digits_pretraining

        net.load_state_dict(digits_pretraining.pretrained_state(net, options, data))
    return Backbone(net, options.feature_dim)


@attrs.frozen(kw_only=True)
class ResNetOptions:
    """`pretrained = true` loads ImageNet weights (torchvision's DEFAULT) from the torch hub
    cache; `weights` names a state-dict file instead. Default: random initialisation."""

    pretrained: bool = False
    weights: str = ""


def _torchvision(arch: str):
    """A torchvision classifier without its last layer: ResNets (`fc`) and ViTs (`heads`)."""

    def build(options: ResNetOptions, data) -> Backbone:
        import torchvision  # imported on use: listing plugins stays fast

        if data.input_shape and (len(data.input_shape) != 3 or data.input_shape[0] != 3):
            raise BackboneError(f"{arch} takes 3-channel images; dataset {data.name!r} has shape {data.input_shape}")
        size = {"image_size": data.input_shape[-1]} if arch.startswith("vit") and data.input_shape else {}
        net = getattr(torchvision.models, arch)(weights=None, **size)
        if options.weights or options.pretrained:
            state = _load_weights(arch, options)
            try:
                net.load_state_dict(state)
            except RuntimeError as exc:
                raise BackboneError(f"{arch}: the pretrained weights do not fit this network "
                                    f"({str(exc).splitlines()[1].strip()}); ViT weights need image_size = 224") from None
        if arch.startswith("vit"):
            feature_dim = net.hidden_dim
            net.heads = nn.Identity()
        else:
            feature_dim = net.fc.in_features
            net.fc = nn.Identity()
        return Backbone(net, feature_dim)

    return build


def _load_weights(arch: str, options: ResNetOptions) -> dict:
    import torchvision

    if options.weights:
        path = Path(options.weights).expanduser()
    else:
        url = torchvision.models.get_model_weights(arch).DEFAULT.url
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if not path.is_file():
        raise BackboneError(
            f"no pretrained weights for {arch} at {path}. spurcore never downloads: copy the file "
            f"there from a machine that has it, or set backbone.options.weights = \"/path/to/{arch}.pth\", "
            f"or train from scratch with backbone.options.pretrained = false"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BackboneError(f"{path}: not a readable state dict for {arch} ({type(exc).__name__}: {exc})") from None


@hookimpl
def spurcore_register_backbones():
    return [
        BackboneSpec(name="small-cnn", build=build_small_cnn, options=SmallCNNOptions,
                     description="conv blocks with BN and max pooling (3 by default, width x 2^(blocks-1) features); seconds per epoch on a CPU; pretrained = \"digits\" starts from offline digit pretraining"),
        BackboneSpec(name="resnet18", build=_torchvision("resnet18"), options=ResNetOptions,
                     description="torchvision ResNet-18, 512 features"),
        BackboneSpec(name="resnet50", build=_torchvision("resnet50"), options=ResNetOptions,
                     description="torchvision ResNet-50 (ImageNet weights IMAGENET1K_V2), 2048 features"),
        BackboneSpec(name="vit-b-16", build=_torchvision("vit_b_16"), options=ResNetOptions,
                     description="torchvision ViT-B/16, 768 features; pretrained weights need 224 x 224 images"),
    ]
