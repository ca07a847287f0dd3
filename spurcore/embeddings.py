"""Penultimate features of every split, for post-hoc stages that refit the head.

Extracted once per model (eval mode, no augmentation) and cached in HDF5 next to the run,
keyed by a fingerprint of the embedding weights and the dataset, so a second post-hoc stage,
run or sweep over the same model skips extraction and a changed checkpoint never reads stale
features.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import attrs
import h5py
import numpy as np
import torch

from spurcore import atomic, distributed
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
def extract(model: SpurModel, data: SpuriousData, device: Device, batch_size: int = 512,
            splits: tuple[str, ...] | None = None) -> Embeddings:
    """Features of every split (or of `splits`) in eval mode."""
    model.eval()
    out = {}
    for name in splits or tuple(data.splits):
        split = data.splits[name]
        chunks = []
        for batch in iterate_batches(split, torch.arange(len(split)), batch_size, **device.loader_options(0)):
            batch = device.move(batch)
            with device.autocast():
                chunks.append(model.features(batch.x, index=batch.index).float())
        out[name] = SplitEmbeddings(features=torch.cat(chunks).cpu().numpy(), y=split.y, a=split.a)
    return Embeddings(out)


def fingerprint(model: SpurModel, dataset: dict) -> str:
    """What embeddings depend on: the embedding network's weights and the dataset (its config
    and split sizes). The head is left out, so every head fitted on one model shares them."""
    digest = hashlib.sha256(json.dumps(dataset, sort_keys=True).encode())
    for name, tensor in sorted(model.embed.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


@attrs.frozen
class CacheResult:
    embeddings: Embeddings
    path: Path
    reused: bool


def cached(model: SpurModel, data: SpuriousData, device: Device, dataset: dict, *,
           write_to: Path, look_in: tuple[Path, ...] = (), batch_size: int = 512) -> CacheResult:
    """Embeddings of every split, read from `<dir>/<fingerprint>.h5` in `write_to` or `look_in`
    when present, else extracted and written (atomically) to `write_to`."""
    name = f"{fingerprint(model, dataset)}.h5"
    for folder in (write_to, *look_in):
        path = Path(folder) / name
        if path.exists():
            try:
                return CacheResult(_read(path), path, True)
            except (OSError, KeyError):
                pass  # an unreadable cache file is rebuilt below
    embeddings = extract(model, data, device, batch_size)
    path = Path(write_to) / name
    if not distributed.writes_files():  # data-parallel: rank 0 writes the cache
        return CacheResult(embeddings, path, False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic.temporary_path(path)
    try:
        with h5py.File(tmp, "w") as handle:
            handle.attrs["fingerprint"] = name[:-3]
            for split, emb in embeddings.splits.items():
                group = handle.create_group(split)
                group.create_dataset("features", data=emb.features, compression="lzf")
                group.create_dataset("y", data=emb.y)
                if emb.a is not None:
                    group.create_dataset("a", data=emb.a)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return CacheResult(embeddings, path, False)


def _read(path: Path) -> Embeddings:
    with h5py.File(path, "r") as handle:
        return Embeddings({
            split: SplitEmbeddings(features=group["features"][()], y=group["y"][()],
                                   a=group["a"][()] if "a" in group else None)
            for split, group in handle.items()
        })
