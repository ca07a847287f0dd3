"""The `timm` backbone: a timm model without its classifier (`num_classes=0`), sized to the
dataset's images, with its pretrained weights (`spurcore_timm.weights`), the dataset's inputs
converted to the normalisation of the model's pretrained config, and its `Layout` declared
(blocks, and for a vision transformer its token grid and MLP neurons), so that FairDropout,
the tracer and Grad-CAM act inside it without knowing timm."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spurcore.api import Backbone, Layout, Normalization, SpuriousData, TokenGrid
from spurcore_timm import TimmOptions
from spurcore_timm.weights import TimmBackboneError, cached_weights, missing_weights, read_state


class Renormalize(nn.Module):
    """Inputs normalised with the dataset's statistics, re-expressed in the model's: per channel
    `x * std_data / std_model + (mean_data - mean_model) / std_model`. Its buffers follow from
    the data and the model, so they are left out of state dicts."""

    def __init__(self, source: Normalization, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        channels = len(source.mean)
        mean_m, std_m = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        if len(mean_m) != channels:  # a model adapted to another number of channels: its average statistics
            mean_m, std_m = mean_m.mean().expand(channels), std_m.mean().expand(channels)
        mean_d, std_d = torch.tensor(source.mean), torch.tensor(source.std)
        self.register_buffer("scale", (std_d / std_m).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", ((mean_d - mean_m) / std_m).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def _renormalize_inputs(module: nn.Module, args: tuple) -> tuple:
    """The timm model's forward pre-hook: its `input_norm` child converts the inputs first
    (a hook, not a wrapper, so that module paths stay timm's own: `blocks.3`)."""
    return (module.input_norm(args[0]), *args[1:])


def build(options: TimmOptions, data: SpuriousData) -> Backbone:
    shape = tuple(data.input_shape)
    if shape and len(shape) != 3:
        raise TimmBackboneError(f"timm models take images (C, H, W); dataset {data.name!r} has input shape {shape}")
    if "num_classes" in options.kwargs:
        raise TimmBackboneError("backbone.options.kwargs.num_classes: the backbone has no head (spurcore adds "
                                "the linear head for the dataset's classes); leave it out")
    net = create(options, shape)
    cfg = dict(net.pretrained_cfg)
    if options.weights or options.pretrained:
        path = Path(options.weights).expanduser() if options.weights else cached_weights(cfg)
        if path is None:
            raise missing_weights(options.model, cfg)
        load(net, read_state(path), cfg, path, options.model)
    mean, std = cfg.get("mean"), cfg.get("std")
    source = data.normalization
    if source is not None and mean and std and (tuple(mean), tuple(std)) != (source.mean, source.std):
        net.input_norm = Renormalize(source, mean, std)
        net.register_forward_pre_hook(_renormalize_inputs)
    return Backbone(net, int(getattr(net, "head_hidden_size", None) or net.num_features), layout=layout(net))


def create(options: TimmOptions, shape: tuple[int, ...]) -> nn.Module:
    """The architecture with random weights, sized to the data: `in_chans` and, for models that
    take one (vision transformers), `img_size` from the image shape, unless `kwargs` set them.
    Pretrained weights made for another size are adapted when loaded (position embeddings
    resampled by the model's own checkpoint filter)."""
    import timm

    kwargs: dict[str, Any] = {"num_classes": 0, **options.kwargs}
    if shape:
        kwargs.setdefault("in_chans", shape[0])
    try:
        if shape and "img_size" not in kwargs:
            try:
                return timm.create_model(options.model, img_size=shape[1] if shape[1] == shape[2] else shape[1:],
                                         **kwargs)
            except TypeError as exc:
                if "img_size" not in str(exc):
                    raise
        return timm.create_model(options.model, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        raise TimmBackboneError(f"timm model {options.model!r} cannot be built with {kwargs} "
                                f"({type(exc).__name__}: {exc})") from None


def load(net: nn.Module, state: dict[str, torch.Tensor], cfg: dict[str, Any], path: Path, name: str) -> None:
    """Load `state` into `net` as timm loads its pretrained weights (the model's checkpoint
    filter, the classifier left out), but strictly: every other tensor must fit."""
    filter_fn = getattr(sys.modules[type(net).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, net)
    classifiers = cfg.get("classifier") or ()
    for classifier in (classifiers,) if isinstance(classifiers, str) else classifiers:
        state.pop(f"{classifier}.weight", None)
        state.pop(f"{classifier}.bias", None)
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        detail = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
        raise TimmBackboneError(f"{path}: the weights do not fit timm model {name!r} ({detail})") from None
    if result.missing_keys or result.unexpected_keys:
        missing, unexpected = result.missing_keys, result.unexpected_keys
        raise TimmBackboneError(
            f"{path}: the weights do not fit timm model {name!r}: "
            f"{len(missing)} tensors missing ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}), "
            f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])}{', ...' if len(unexpected) > 3 else ''}); "
            f"is it a state dict of {name} with the same backbone.options.kwargs?"
        )


def token_grid(net: nn.Module) -> TokenGrid | None:
    """A vision transformer's token layout (prefix tokens, patch grid), or None for other models."""
    prefix = getattr(net, "num_prefix_tokens", None)
    grid = getattr(getattr(net, "patch_embed", None), "grid_size", None)
    if prefix is None or grid is None or getattr(net, "dynamic_img_size", False):
        return None
    return TokenGrid(prefix=int(prefix), rows=int(grid[0]), cols=int(grid[1]))


def layout(net: nn.Module) -> Layout:
    """The model's blocks (the modules of timm's `feature_info`: `blocks.0`.. of a ViT,
    `layer1`.. of a ResNet); for a vision transformer also its token grid, and its neurons: the
    hidden units of every MLP block (the output units of each `Mlp`'s `fc1`)."""
    from timm.layers import Mlp

    modules = dict(net.named_modules())
    blocks = [info["module"] for info in getattr(net, "feature_info", None) or () if info.get("module") in modules]
    tokens = token_grid(net)
    neurons = [f"{path}.fc1" for path, module in modules.items()
               if isinstance(module, Mlp) and isinstance(getattr(module, "fc1", None), (nn.Linear, nn.Conv2d))]
    return Layout(blocks=blocks, neurons=neurons if tokens is not None else (), tokens=tokens)
