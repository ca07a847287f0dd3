"""FairDropout's stage object, which inserts the layers into the model, and the switch of
their inference mode; imported when a FairDropout stage runs."""

from __future__ import annotations

import functools

import torch
from torch import nn

from spurcore import hookimpl
from spurcore.api import SpurcoreError
from spurcore_fairdropout import FEATURES, LINEAR, FairDropoutOptions
from spurcore_fairdropout.layer import MODES, FairDropout


class FairDropoutError(SpurcoreError):
    pass


class FairDropoutStage:
    def __init__(self, options: FairDropoutOptions) -> None:
        self.options = options

    def _layer(self, model, k: int) -> FairDropout:
        o = self.options
        return FairDropout(model.context, o.p_gen, o.p_mem, seed=o.seed * 1000 + k, mode=o.modes()[0],
                           tokens=model.layout.tokens is not None)

    @hookimpl
    def spurcore_prepare_model(self, model):
        for k, path in enumerate(self.options.placement):
            if path == FEATURES:
                model.embed = nn.Sequential(model.embed, self._layer(model, k))
            elif path == LINEAR:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(self.options.seed)
                    linear = nn.Linear(model.feature_dim, model.feature_dim)
                model.embed = nn.Sequential(model.embed, linear, self._layer(model, k))
            else:
                parent_path, _, name = path.rpartition(".")
                try:
                    parent = model.embed.get_submodule(parent_path) if parent_path else model.embed
                    target = getattr(parent, name)
                    if not isinstance(target, nn.Module):
                        raise AttributeError(name)
                except AttributeError:
                    known = ", ".join(n for n, _ in model.embed.named_children())
                    blocks = ", ".join(p.removeprefix("embed.") for p in model.block_paths())
                    raise FairDropoutError(
                        f"fairdropout placement {path!r}: the backbone has no such module "
                        f"({f'its blocks: {blocks}; ' if blocks else ''}its top-level modules: {known}; "
                        f"or use \"features\" / \"linear\")"
                    ) from None
                setattr(parent, name, nn.Sequential(target, self._layer(model, k)))

    @hookimpl
    def spurcore_inference_variants(self, model):
        modes = self.options.modes()
        return {mode: functools.partial(set_inference_mode, mode=mode) for mode in modes} if len(modes) > 1 else None


def set_inference_mode(model: nn.Module, mode: str) -> None:
    """Switch every FairDropout layer of `model` to an inference mode (e.g. "keep" to compare
    a model with its memorizing units kept against the same model with them dropped)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    for module in model.modules():
        if isinstance(module, FairDropout):
            module.mode = mode
