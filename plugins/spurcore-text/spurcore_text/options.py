"""The options of the text backbones (`[backbone.options]`), apart from the encoders so that
registering the backbones imports no torch."""

from __future__ import annotations

from typing import Literal

import attrs


@attrs.frozen(kw_only=True)
class MiniLMOptions:
    """`model`: the bundled MiniLM, a model folder, or a Hugging Face cache id."""

    model: str = "minilm"
    pretrained: bool = True
    pooling: Literal["cls", "mean"] = "mean"


@attrs.frozen(kw_only=True)
class BertOptions:
    model: str = "bert-base-uncased"
    pretrained: bool = True
    pooling: Literal["cls", "mean"] = "cls"
