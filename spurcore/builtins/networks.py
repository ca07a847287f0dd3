"""The networks of the basic backbones (options and registration: `spurcore.builtins.backbones`):
the small CNN, torchvision's classifiers without their last layer, and their pretrained weights,
read from the local torch hub cache or a named file and never downloaded."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from spurcore.builtins.backbones import ResNetOptions, SmallCNNOptions
from spurcore.errors import SpurcoreError
from spurcore.model import Backbone, Layout


class BackboneError(SpurcoreError):
    pass


class SmallCNN(nn.Module):
    """`blocks` conv blocks (`block1`, `block2`, ...), optionally a 1 x 1 block widening to
    `expand` channels (`expand`), and global average pooling."""

    def __init__(self, in_channels: int = 3, width: int = 32, blocks: int = 3, pool_last: bool = False,
                 expand: int = 0) -> None:
        super().__init__()
        channels = in_channels
        for i in range(blocks):
            out = width * 2**i
            layers = [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            if i < blocks - 1 or pool_last:
                layers.append(nn.MaxPool2d(2))
            self.add_module(f"block{i + 1}", nn.Sequential(*layers))
            channels = out
        if expand:
            self.expand = nn.Sequential(nn.Conv2d(channels, expand, 1, bias=False), nn.BatchNorm2d(expand),
                                        nn.ReLU(inplace=True))
        self.block_names = [f"block{i + 1}" for i in range(blocks)] + (["expand"] if expand else [])
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.block_names:
            x = getattr(self, name)(x)
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
    net = SmallCNN(channels, options.width, options.blocks, options.pool_last, options.expand)
    if options.pretrained:
        from spurcore.builtins import digits_pretraining

        net.load_state_dict(digits_pretraining.pretrained_state(net, options, data))
    return Backbone(net, options.feature_dim, layout=Layout(blocks=net.block_names))


def build_torchvision(options: ResNetOptions, data, *, arch: str) -> Backbone:
    """A torchvision classifier `arch` without its last layer: ResNets (`fc`) and ViTs (`heads`)."""
    import torchvision  # on use: building a small CNN needs none of it

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
        return Backbone(net, feature_dim)
    feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    return Backbone(net, feature_dim, layout=Layout(blocks=["layer1", "layer2", "layer3", "layer4"]))


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
