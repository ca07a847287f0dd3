"""The basic backbones: `small-cnn` (fast on two CPU cores) and torchvision ResNets.

ResNet weights never download: pretrained weights come from the local torch hub cache or
from a file named in the pipeline, and their absence is an error that says how to proceed.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import torch
from torch import nn

from spurcore.config import positive
from spurcore.errors import SpurcoreError
from spurcore.hookspecs import hookimpl
from spurcore.model import Backbone
from spurcore.specs import BackboneSpec


class BackboneError(SpurcoreError):
    pass


@attrs.frozen(kw_only=True)
class SmallCNNOptions:
    width: int = attrs.field(default=32, validator=positive)


class SmallCNN(nn.Module):
    """Three conv blocks (`block1`..`block3`) and global average pooling: 4 x width features."""

    def __init__(self, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()

        def block(i: int, o: int, pool: bool) -> nn.Sequential:
            layers = [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]
            return nn.Sequential(*layers, nn.MaxPool2d(2)) if pool else nn.Sequential(*layers)

        self.block1 = block(in_channels, width, True)
        self.block2 = block(width, 2 * width, True)
        self.block3 = block(2 * width, 4 * width, False)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.block3(self.block2(self.block1(x)))).flatten(1)


def build_small_cnn(options: SmallCNNOptions, data) -> Backbone:
    channels = data.input_shape[0] if data.input_shape else 3
    return Backbone(SmallCNN(channels, options.width), 4 * options.width)


@attrs.frozen(kw_only=True)
class ResNetOptions:
    """`pretrained = true` loads ImageNet weights from the torch hub cache; `weights` names a
    state-dict file instead. Default: random initialisation."""

    pretrained: bool = False
    weights: str = ""


def _resnet(arch: str):
    def build(options: ResNetOptions, data) -> Backbone:
        import torchvision  # imported on use: listing plugins stays fast

        net = getattr(torchvision.models, arch)(weights=None)
        if options.weights or options.pretrained:
            net.load_state_dict(_load_weights(arch, options))
        if data.input_shape and data.input_shape[0] != 3:
            raise BackboneError(f"{arch} takes 3-channel images; dataset {data.name!r} has shape {data.input_shape}")
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
                     description="three conv blocks, 4 x width features; seconds per epoch on a CPU"),
        BackboneSpec(name="resnet18", build=_resnet("resnet18"), options=ResNetOptions,
                     description="torchvision ResNet-18, 512 features"),
        BackboneSpec(name="resnet50", build=_resnet("resnet50"), options=ResNetOptions,
                     description="torchvision ResNet-50, 2048 features"),
    ]
