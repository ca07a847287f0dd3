"""The basic backbones: `small-cnn` (fast on two CPU cores), torchvision ResNets and ViT-B/16.

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
                     description="three conv blocks, 4 x width features; seconds per epoch on a CPU"),
        BackboneSpec(name="resnet18", build=_torchvision("resnet18"), options=ResNetOptions,
                     description="torchvision ResNet-18, 512 features"),
        BackboneSpec(name="resnet50", build=_torchvision("resnet50"), options=ResNetOptions,
                     description="torchvision ResNet-50 (ImageNet weights IMAGENET1K_V2), 2048 features"),
        BackboneSpec(name="vit-b-16", build=_torchvision("vit_b_16"), options=ResNetOptions,
                     description="torchvision ViT-B/16, 768 features; pretrained weights need 224 x 224 images"),
    ]
