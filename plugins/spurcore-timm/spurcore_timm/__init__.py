"""spurcore-timm: every model timm knows as a backbone (`[backbone] name = "timm"`,
`options.model = "vit_small_patch16_224"`), without its classifier, with its weights read from
this machine only (the local Hugging Face cache, the torch hub cache, or a named file).

The network, its weights and its layout are built in `spurcore_timm.backbone` (imported when
a pipeline builds one); this module holds the options and the registration only, so that
`spur list` imports neither timm nor torch.
"""

from __future__ import annotations

import difflib
from typing import Any

import attrs

from spurcore import hookimpl
from spurcore.api import BackboneSpec, FieldError, lazy, lazy_exports

__all__ = ["TimmOptions", "TimmBackboneError", "cached_weights"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "TimmBackboneError": "spurcore_timm.weights:TimmBackboneError",
    "cached_weights": "spurcore_timm.weights:cached_weights",
})


def _timm_model(instance: Any, attribute: attrs.Attribute, value: str) -> None:
    """A name `timm.create_model` takes: an architecture of `timm.list_models()`, optionally
    with a pretrained tag (`vit_small_patch16_224.augreg_in21k_ft_in1k`)."""
    import timm  # on validation only: listing plugins imports no torch

    arch, _, tag = value.partition(".")
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        hint = f"close names: {', '.join(close)}" if close else "e.g. vit_small_patch16_224, resnet50"
        raise FieldError(attribute.name, f"{value!r} is not a timm model ({hint}; "
                                         f"`python -c \"import timm; print(timm.list_models('vit_*'))\"` lists them)")
    if tag and value not in timm.list_pretrained(arch + ".*"):
        tags = [name.partition(".")[2] for name in timm.list_pretrained(arch + ".*")]
        raise FieldError(attribute.name, f"timm has no weights tagged {tag!r} for {arch} "
                                         f"(its tags: {', '.join(tags) or 'none'})")


@attrs.frozen(kw_only=True)
class TimmOptions:
    """`model`: any name of `timm.list_models()`, optionally with a pretrained tag after a dot.
    `pretrained = true`: the model's pretrained weights, from the local Hugging Face cache (or,
    for weights timm names by URL only, the torch hub cache); never downloaded. `weights`: a
    `.safetensors` or `.pth` state dict of the model instead (it wins over `pretrained`).
    Neither: random weights.
    `kwargs`: passed on to `timm.create_model` (`depth`, `embed_dim`, `drop_path_rate`, ...);
    the image size and channels come from the dataset unless set here."""

    model: str = attrs.field(default="vit_small_patch16_224", validator=_timm_model)
    pretrained: bool = False
    weights: str = ""
    kwargs: dict[str, Any] = attrs.field(factory=dict)


@hookimpl
def spurcore_register_backbones():
    return [BackboneSpec(
        name="timm", build=lazy("spurcore_timm.backbone:build"), options=TimmOptions,
        description="any timm model (options.model, default vit_small_patch16_224) without its head; "
                    "weights from the local Hugging Face cache or a file, never downloaded",
    )]
