"""Penultimate features of every split, for post-hoc stages that refit the head.

Extracted once per model (eval mode, no augmentation) and cached in HDF5 next to the run,
keyed by a fingerprint of the embedding weights and the dataset, so a second post-hoc stage,
run or sweep over the same model skips extraction and a changed checkpoint never reads stale
features.

At CelebA's size the features outgrow what a process should hold (162,770 x 2,048 float32 is
1.3 GB for the training split alone), so extraction streams them batch by batch into the file,
never holding a split at once, and the cache is read back as memory maps: a split's features
are an array whose pages the operating system reads from the file as they are used (and may
drop again), so a method that reads only val never loads train. The features are stored
uncompressed and contiguous (4 bytes per example and dimension) for that reason.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import attrs
import h5py
import numpy as np
import torch

from spurcore import atomic, distributed
from spurcore.data import SplitData, SpuriousData, iterate_batches
from spurcore.device import Device
from spurcore.model import SpurModel


@attrs.frozen(kw_only=True)
class SplitEmbeddings:
    """Features (examples x feature_dim, float32) with the split's labels. Read from the cache,
    `features` is a copy-on-write memory map of the file: index it (`features[rows]`) or reduce
    it in chunks rather than copying it whole."""

    features: np.ndarray
    y: np.ndarray
    a: np.ndarray | None


@attrs.frozen
class Embeddings:
    """Embeddings by split name, from the model in eval mode without augmentation."""

    splits: Mapping[str, SplitEmbeddings]

    def __getitem__(self, split: str) -> SplitEmbeddings:
        return self.splits[split]


def _feature_batches(model: SpurModel, split: SplitData, device: Device, batch_size: int) -> Iterator[np.ndarray]:
    """The features of `split`, in order, one float32 batch at a time."""
    model.eval()
    for batch in iterate_batches(split, torch.arange(len(split)), batch_size, **device.loader_options(0)):
        batch = device.move(batch)
        with device.autocast():
            yield model.features(batch.x, index=batch.index).float().cpu().numpy()


@torch.no_grad()
def extract(model: SpurModel, data: SpuriousData, device: Device, batch_size: int = 512,
            splits: tuple[str, ...] | None = None) -> Embeddings:
    """Features of every split (or of `splits`) in eval mode, in memory (one array per split,
    filled batch by batch); `cached` streams them to a file instead."""
    out = {}
    for name in splits or tuple(data.splits):
        split = data.splits[name]
        features = None
        start = 0
        for chunk in _feature_batches(model, split, device, batch_size):
            if features is None:
                features = np.empty((len(split), chunk.shape[1]), dtype=np.float32)
            features[start:start + len(chunk)] = chunk
            start += len(chunk)
        out[name] = SplitEmbeddings(features=features, y=split.y, a=split.a)
    return Embeddings(out)


@torch.no_grad()
def extract_to_file(model: SpurModel, data: SpuriousData, device: Device, path: Path, batch_size: int = 512) -> None:
    """Write the features of every split to the HDF5 file `path` as they are computed: group
    `<split>` with `features` (examples x dimensions, float32, contiguous), `y` and `a`."""
    with h5py.File(path, "w") as handle:
        for name, split in data.splits.items():
            group = handle.create_group(name)
            group.create_dataset("y", data=split.y)
            if split.a is not None:
                group.create_dataset("a", data=split.a)
            features, start = None, 0
            for chunk in _feature_batches(model, split, device, batch_size):
                if features is None:
                    features = group.create_dataset("features", shape=(len(split), chunk.shape[1]), dtype=np.float32)
                features[start:start + len(chunk)] = chunk
                start += len(chunk)


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

    def describe(self) -> str:
        """The cache's size and what one example costs in it, for the run's log."""
        features = [s.features for s in self.embeddings.splits.values()]
        examples = sum(len(f) for f in features)
        size = sum(f.nbytes for f in features)
        return (f"{examples} examples x {features[0].shape[1]} float32 features, "
                f"{size / max(examples, 1) / 1024:.1f} KiB per example, {size / 2**20:.1f} MiB")


def cached(model: SpurModel, data: SpuriousData, device: Device, dataset: dict, *,
           write_to: Path, look_in: tuple[Path, ...] = (), batch_size: int = 512) -> CacheResult:
    """Embeddings of every split, read from `<dir>/<fingerprint>.h5` in `write_to` or `look_in`
    when present, else extracted into it (atomically) and read from there."""
    name = f"{fingerprint(model, dataset)}.h5"
    for folder in (write_to, *look_in):
        path = Path(folder) / name
        if path.exists():
            try:
                return CacheResult(read(path), path, True)
            except (OSError, KeyError):
                pass  # an unreadable cache file is rebuilt below
    path = Path(write_to) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic.temporary_path(path)
    try:
        extract_to_file(model, data, device, tmp, batch_size)
        if not distributed.writes_files():  # data-parallel: rank 0 keeps the cache, the others read theirs once
            embeddings = read(tmp)
            tmp.unlink()  # the memory maps keep the unlinked file's pages
            return CacheResult(embeddings, path, False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return CacheResult(read(path), path, False)


def read(path: Path) -> Embeddings:
    """The embeddings in the cache file `path`, features memory-mapped where they are stored
    contiguously (caches written before streaming were compressed: those are read whole)."""
    with h5py.File(path, "r") as handle:
        return Embeddings({
            split: SplitEmbeddings(features=_mapped(path, group["features"]), y=group["y"][()],
                                   a=group["a"][()] if "a" in group else None)
            for split, group in handle.items()
        })


def _mapped(path: Path, dataset: h5py.Dataset) -> np.ndarray:
    offset = dataset.id.get_offset()
    if offset is None or dataset.chunks is not None or dataset.size == 0:
        return dataset[()]
    return np.memmap(path, dtype=dataset.dtype, mode="c", offset=offset, shape=dataset.shape)
