"""Penultimate features of every split, for post-hoc stages that refit the head."""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import numpy as np
import torch

from spurcore.data import SpuriousData, iterate_batches
from spurcore.device import Device
from spurcore.model import SpurModel


@attrs.frozen(kw_only=True)
class SplitEmbeddings:
    """Features (examples x feature_dim, float32) with the split's labels."""

    features: np.ndarray
    y: np.ndarray
    a: np.ndarray | None


@attrs.frozen
class Embeddings:
    """Embeddings by split name, from the model in eval mode without augmentation."""

    splits: Mapping[str, SplitEmbeddings]

    def __getitem__(self, split: str) -> SplitEmbeddings:
        return self.splits[split]


@torch.no_grad()
def extract(model: SpurModel, data: SpuriousData, device: Device, batch_size: int = 512) -> Embeddings:
    model.eval()
    out = {}
    for name, split in data.splits.items():
        chunks = []
        for batch in iterate_batches(split, torch.arange(len(split)), batch_size, pin_memory=device.pin_memory):
            batch = device.move(batch)
            with device.autocast():
                chunks.append(model.features(batch.x, index=batch.index).float())
        out[name] = SplitEmbeddings(features=torch.cat(chunks).cpu().numpy(), y=split.y, a=split.a)
    return Embeddings(out)
