"""FairDropout (docs/methods/fairdropout.md): a training stage that inserts example-tied dropout
after chosen modules, so that memorization goes to units which are dropped at inference.

Training itself is ERM's (the default loss passes each batch's example indices to the model);
this plugin only changes the model's structure, in `spurcore_prepare_model`.
"""

from __future__ import annotations

from typing import Literal

import attrs

from spurcore import hookimpl
from spurcore.api import FieldError, MitigationSpec, fraction, lazy, lazy_exports

__all__ = ["FairDropout", "FairDropoutOptions", "keep_mask", "set_inference_mode"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "FairDropout": "spurcore_fairdropout.layer:FairDropout",
    "keep_mask": "spurcore_fairdropout.layer:keep_mask",
    "set_inference_mode": "spurcore_fairdropout.stage:set_inference_mode",
    "FairDropoutError": "spurcore_fairdropout.stage:FairDropoutError",
    "FairDropoutStage": "spurcore_fairdropout.stage:FairDropoutStage",
})

FEATURES = "features"  # the embedding's output (any backbone)
LINEAR = "linear"  # a new linear layer on the embedding's output, dropout after it (text encoders)


def _placement(instance, attribute, value) -> None:
    if not value:
        raise FieldError(attribute.name, "name at least one module (e.g. \"block2\", \"layer3\") or \"features\"")
    if len(set(value)) != len(value):
        raise FieldError(attribute.name, f"names a module twice: {value}")


SELECT = "select"  # every inference mode evaluated after every epoch; the selector picks (mode, epoch)
SELECTABLE = ("drop", "scale", "drop-rescale")


def _inference(instance, attribute, value) -> None:
    if value == "drop-rescale" and instance.p_gen == 0:
        raise FieldError(attribute.name, "\"drop-rescale\" needs p_gen > 0")


@attrs.frozen(kw_only=True)
class FairDropoutOptions:
    """`placement`: module paths inside the backbone to insert the layer after ("block1".."block3"
    of small-cnn, "layer1".."layer4" of a ResNet), "features" for the embedding's output, or
    "linear" for a new linear layer on the embedding's output with the dropout after it.
    `inference`: what happens to the memorizing units at inference: "select" (the default)
    evaluates "drop", "scale" and "drop-rescale" after every epoch and lets the pipeline's
    selector choose the mode with the epoch (no retraining; `modes()`); or one mode, fixed."""

    p_gen: float = attrs.field(default=0.5, validator=fraction)
    p_mem: float = attrs.field(default=0.1, validator=fraction)
    placement: list[str] = attrs.field(factory=lambda: [FEATURES], validator=_placement)
    inference: Literal["select", "drop", "drop-rescale", "scale", "keep"] = attrs.field(default=SELECT,
                                                                                          validator=_inference)
    seed: int = 0

    def modes(self) -> tuple[str, ...]:
        """The inference modes the stage evaluates, the first being the layer's own."""
        if self.inference != SELECT:
            return (self.inference,)
        return tuple(m for m in SELECTABLE if m != "drop-rescale" or self.p_gen > 0)


@hookimpl
def spurcore_register_mitigations():
    return [MitigationSpec(
        name="fairdropout", kind="train", options=FairDropoutOptions, factory=lazy("spurcore_fairdropout.stage:FairDropoutStage"),
        # the paper's reported setting is p_gen = p_mem = 0.2; the authors' code places the layer
        # after two blocks at once; on small-cnn "features" is the output of its last block
        search_space={"p_gen": [0.2, 0.3, 0.5, 0.7], "p_mem": [0.1, 0.2, 0.3, 0.5],
                      "placement": [[FEATURES], ["block2"], ["block2", "block3"]]},
        description="FairDropout: example-tied dropout, memorizing units dropped (or scaled) at inference, "
                    "the mode chosen per epoch by the selector",
    )]
