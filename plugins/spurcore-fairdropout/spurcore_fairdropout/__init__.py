"""FairDropout (METHODS.md section 3): a training stage that inserts example-tied dropout
after chosen modules, so that memorization goes to units which are dropped at inference.

Training itself is ERM's (the default loss passes each batch's example indices to the model);
this plugin only changes the model's structure, in `spurcore_prepare_model`.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from torch import nn

from spurcore import hookimpl
from spurcore.config import FieldError, fraction
from spurcore.errors import SpurcoreError
from spurcore.specs import MitigationSpec
from spurcore_fairdropout.layer import MODES, FairDropout, keep_mask

__all__ = ["FairDropout", "FairDropoutOptions", "keep_mask", "set_inference_mode"]

FEATURES = "features"  # the embedding's output (any backbone)
LINEAR = "linear"  # a new linear layer on the embedding's output, dropout after it (text encoders)


def _placement(instance, attribute, value) -> None:
    if not value:
        raise FieldError(attribute.name, "name at least one module (e.g. \"block2\", \"layer3\") or \"features\"")
    if len(set(value)) != len(value):
        raise FieldError(attribute.name, f"names a module twice: {value}")


def _inference(instance, attribute, value) -> None:
    if value == "drop-rescale" and instance.p_gen == 0:
        raise FieldError(attribute.name, "\"drop-rescale\" needs p_gen > 0")


@attrs.frozen(kw_only=True)
class FairDropoutOptions:
    """`placement`: module paths inside the backbone to insert the layer after ("block1".."block3"
    of small-cnn, "layer1".."layer4" of a ResNet), "features" for the embedding's output, or
    "linear" for a new linear layer on the embedding's output with the dropout after it."""

    p_gen: float = attrs.field(default=0.5, validator=fraction)
    p_mem: float = attrs.field(default=0.1, validator=fraction)
    placement: list[str] = attrs.field(factory=lambda: [FEATURES], validator=_placement)
    inference: Literal["drop", "drop-rescale", "scale", "keep"] = attrs.field(default="drop", validator=_inference)
    seed: int = 0


class FairDropoutError(SpurcoreError):
    pass


class FairDropoutStage:
    def __init__(self, options: FairDropoutOptions) -> None:
        self.options = options

    def _layer(self, model, k: int) -> FairDropout:
        o = self.options
        return FairDropout(model.context, o.p_gen, o.p_mem, seed=o.seed * 1000 + k, mode=o.inference)

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
                    raise FairDropoutError(
                        f"fairdropout placement {path!r}: the backbone has no such module "
                        f"(its top-level modules: {known}; or use \"features\" / \"linear\")"
                    ) from None
                setattr(parent, name, nn.Sequential(target, self._layer(model, k)))


def set_inference_mode(model: nn.Module, mode: str) -> None:
    """Switch every FairDropout layer of `model` to an inference mode (e.g. "keep" to compare
    a model with its memorizing units kept against the same model with them dropped)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    for module in model.modules():
        if isinstance(module, FairDropout):
            module.mode = mode


@hookimpl
def spurcore_register_mitigations():
    return [MitigationSpec(
        name="fairdropout", kind="train", options=FairDropoutOptions, factory=FairDropoutStage,
        search_space={"p_gen": [0.3, 0.5, 0.7], "p_mem": [0.1, 0.3, 0.5],
                      "placement": [[FEATURES], ["block3"], ["block2"]]},
        description="FairDropout: example-tied dropout, memorizing units dropped at inference",
    )]
