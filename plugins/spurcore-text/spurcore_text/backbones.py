"""Transformer text backbones: a Hugging Face encoder pooled to one feature vector per text.

The batch's `x` is the dict `TokenizedText` items collate into; the module passes it to the
encoder as keyword arguments and pools the last hidden states: `cls` takes the first token
(BERT's classification token), `mean` averages the unpadded tokens (how MiniLM sentence
embeddings are made).
"""

from __future__ import annotations

import torch
from torch import nn

from spurcore.api import Backbone
from spurcore_text.models import TextModelError, load_encoder, locate
from spurcore_text.options import BertOptions, MiniLMOptions


class TextEncoder(nn.Module):
    """`encoder(**x).last_hidden_state`, pooled."""

    def __init__(self, encoder: nn.Module, pooling: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.encoder(**x).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = x["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


def build(options: MiniLMOptions | BertOptions, data) -> Backbone:
    """The encoder named by `options.model`, after checking the data is text tokenized for it."""
    tokenized_with = getattr(data.splits["train"].inputs, "tokenizer_name", None)
    if tokenized_with is None:
        raise TextModelError(f"backbone {options.model!r} reads tokenized text, and dataset {data.name!r} "
                             f"holds no text tokenized by spurcore-text (pick an image backbone for it)")
    if locate(tokenized_with) != locate(options.model):
        raise TextModelError(
            f"dataset {data.name!r} is tokenized for {tokenized_with!r} but the backbone is {options.model!r}: "
            f"set dataset.options.tokenizer = {options.model!r} so both read the same vocabulary"
        )
    encoder = load_encoder(options.model, options.pretrained)
    return Backbone(TextEncoder(encoder, options.pooling), int(encoder.config.hidden_size))
