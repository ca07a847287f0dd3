"""Tokenized text as a map-style dataset: item i is a dict of 1-d tensors (`input_ids`,
`attention_mask`, and `token_type_ids` for models that use segments), padded to the
dataset's max length, so the default collation stacks them into one dict per batch and
every batch flows through `Batch.x` and `Device.move` like an image tensor does."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from spurcore_text.models import load_tokenizer


class TokenizedText(torch.utils.data.Dataset):
    """Texts (or text pairs, as for NLI) tokenized on access with `tokenizer_name`'s tokenizer.

    Tokenizing per item keeps building instant and lets DataLoader workers share the work;
    `tokenizer_name` is kept so a text backbone can check it reads the same vocabulary."""

    def __init__(self, texts: Sequence[str], tokenizer_name: str, max_length: int,
                 pairs: Sequence[str] | None = None) -> None:
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"{len(texts)} first texts but {len(pairs)} second texts")
        self.texts = list(texts)
        self.pairs = None if pairs is None else list(pairs)
        self.tokenizer_name = tokenizer_name
        self.max_length = max_length
        self.tokenizer = load_tokenizer(tokenizer_name)

    def __len__(self) -> int:
        return len(self.texts)

    def content_key(self) -> str:
        """What the examples are, for caches derived from them (`spurcore.api.content_digest`):
        every text (and second text), the tokenizer and the length."""
        digest = hashlib.sha256(f"{self.tokenizer_name}\0{self.max_length}\0".encode())
        for texts in (self.texts, self.pairs or ()):
            for text in texts:
                digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
            digest.update(b"\1")
        return "texts " + digest.hexdigest()

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        second = None if self.pairs is None else self.pairs[i]
        encoded = self.tokenizer(self.texts[i], second, truncation=True, max_length=self.max_length,
                                 padding="max_length", return_tensors="pt")
        return {key: value[0] for key, value in encoded.items()}
