"""Penultimate features of every split, for post-hoc stages that refit the head.

Extracted once per model (eval mode, no augmentation) and cached in HDF5 next to the run,
keyed by a fingerprint of what they were derived from: the embedding weights, the dataset's
config and its content (`spurcore.data.content_digest`: every split's labels and its inputs,
an image folder's file index included), so a second post-hoc stage, run or sweep over the same
model skips extraction, while a changed checkpoint, label or file never reads stale features.

At CelebA's size the features outgrow what a process should hold (162,770 x 2,048 float32 is
1.3 GB for the training split alone), so extraction streams them batch by batch into the file,
never holding a split at once, and the cache is read back as memory maps: a split's features
are an array whose pages the operating system reads from the file as they are used (and may
drop again), so a method that reads only val never loads train. The features are stored
uncompressed and contiguous (4 bytes per example and dimension) for that reason.

A cache file is checked before it is used (`problem`): its format and full key, its splits,
each split's row count, shape and dtype against the data, its labels against the split's, and
the CRC-32 of each split's features, computed while they were written and again, in chunks,
from the file (a damaged or truncated file, or one whose rows were edited, is extracted again,
saying why). A file written before these checks existed is extracted again too.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import attrs
import h5py
import numpy as np
import torch

from spurcore import atomic, distributed
from spurcore.data import SplitData, SpuriousData, content_digest, iterate_batches
from spurcore.device import Device
from spurcore.errors import StorageError
from spurcore.model import SpurModel

FORMAT = 2  # the file's `format` attribute; 2: key and checksums stored (earlier files are extracted again)
CHUNK_BYTES = 16 * 2**20  # what verifying a checksum reads at a time


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
def extract_to_file(model: SpurModel, data: SpuriousData, device: Device, path: Path, batch_size: int = 512,
                    key: str = "") -> None:
    """Write the features of every split to the HDF5 file `path` as they are computed: group
    `<split>` with `features` (examples x dimensions, float32, contiguous; attribute `crc32`,
    the CRC-32 of their bytes), `y` and `a`; the file's attributes `format` and `key` (the
    fingerprint it is cached under)."""
    with h5py.File(path, "w") as handle:
        handle.attrs["format"] = FORMAT
        handle.attrs["key"] = key
        for name, split in data.splits.items():
            group = handle.create_group(name)
            group.create_dataset("y", data=split.y)
            if split.a is not None:
                group.create_dataset("a", data=split.a)
            features, start, crc = None, 0, 0
            for chunk in _feature_batches(model, split, device, batch_size):
                if features is None:
                    features = group.create_dataset("features", shape=(len(split), chunk.shape[1]), dtype=np.float32)
                features[start:start + len(chunk)] = chunk
                crc = zlib.crc32(np.ascontiguousarray(chunk, dtype=np.float32), crc)
                start += len(chunk)
            group.attrs["crc32"] = crc


def fingerprint(model: SpurModel, dataset: dict, content: str = "") -> str:
    """What embeddings depend on: the embedding network's weights, the dataset's config and its
    content (`spurcore.data.content_digest`). The head is left out, so every head fitted on one
    model shares them."""
    digest = hashlib.sha256(json.dumps(dataset, sort_keys=True).encode())
    digest.update(content.encode())
    for name, tensor in sorted(model.embed.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def problem(path: Path, data: SpuriousData, key: str) -> str | None:
    """Why the cache file `path` cannot be used for `data` under `key`, or None when it can:
    its format and key, its splits, each split's features (rows, shape, dtype, contiguous
    storage, CRC-32 read back in chunks) and labels against the split's. Reads at most
    `CHUNK_BYTES` of features at a time, so checking never holds a split whole."""
    try:
        with h5py.File(path, "r") as handle:
            if handle.attrs.get("format") != FORMAT:
                return "written by an earlier version, without checksums"
            if handle.attrs.get("key") != key:
                return "made from another model or other data (its key differs)"
            if sorted(handle) != sorted(data.splits):
                return f"holds splits {', '.join(sorted(handle))}, the data has {', '.join(sorted(data.splits))}"
            dims = set()
            for name, split in data.splits.items():
                found = _split_problem(path, handle[name], split)
                if found:
                    return f"split {name!r}: {found}"
                dims.add(handle[name]["features"].shape[1])
            if len(dims) != 1:
                return f"its splits have features of {len(dims)} different widths"
    except Exception as exc:  # noqa: BLE001 - whatever HDF5 makes of a damaged file, it is damaged
        return f"unreadable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    return None


def _split_problem(path: Path, group: h5py.Group, split: SplitData) -> str | None:
    features = group["features"]
    if features.dtype != np.float32 or features.ndim != 2 or features.shape[0] != len(split):
        return (f"features of shape {features.shape} and dtype {features.dtype}; expected {len(split)} rows "
                f"of float32")
    if not np.array_equal(group["y"][()], split.y):
        return "class labels differ from the split's"
    if ("a" in group) != (split.a is not None) or (split.a is not None and not np.array_equal(group["a"][()], split.a)):
        return "attribute labels differ from the split's"
    offset = features.id.get_offset()
    if offset is None or features.chunks is not None:
        return "features not stored contiguously"
    if _crc32(path, offset, features.size * 4) != group.attrs.get("crc32"):
        return "features damaged (their CRC-32 differs from the one stored when they were written)"
    return None


def _crc32(path: Path, offset: int, size: int) -> int:
    crc = 0
    with open(path, "rb") as handle:
        handle.seek(offset)
        while size > 0:
            block = handle.read(min(size, CHUNK_BYTES))
            if not block:
                return -1  # the file ends before its features do
            crc = zlib.crc32(block, crc)
            size -= len(block)
    return crc


@attrs.frozen
class CacheResult:
    """`notes`: what the log should say besides where the features came from (a damaged file
    extracted again, a read-only folder written elsewhere)."""

    embeddings: Embeddings
    path: Path
    reused: bool
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        """The cache's size and what one example costs in it, for the run's log."""
        features = [s.features for s in self.embeddings.splits.values()]
        examples = sum(len(f) for f in features)
        size = sum(f.nbytes for f in features)
        return (f"{examples} examples x {features[0].shape[1]} float32 features, "
                f"{size / max(examples, 1) / 1024:.1f} KiB per example, {size / 2**20:.1f} MiB")


def cached(model: SpurModel, data: SpuriousData, device: Device, dataset: dict, *,
           write_to: Path, look_in: Sequence[Path] = (), batch_size: int = 512,
           content: str | None = None) -> CacheResult:
    """Embeddings of every split, read from `<dir>/<fingerprint>.h5` in `write_to` or `look_in`
    when a valid one is there (`problem`), else extracted (atomically) into `write_to`, or,
    where that folder cannot be written (a run read-only to this user), into the first of
    `look_in` that can, and read from there. `content`: the data's `content_digest`, when the
    caller has it already (it reads every label)."""
    key = fingerprint(model, dataset, content_digest(data) if content is None else content)
    name = f"{key[:20]}.h5"
    notes = []
    for folder in (write_to, *look_in):
        path = Path(folder) / name
        if path.exists():
            found = problem(path, data, key)
            if found is None:
                return CacheResult(read(path), path, True, tuple(notes))
            notes.append(f"{path} is not used: {found}; extracting again")
    refused = []
    for folder in (write_to, *look_in):
        cause = atomic.unwritable(folder)
        if cause is not None:
            refused.append(f"{folder} ({os.strerror(cause.errno)})")
            continue
        if refused:
            notes.append(f"cached here since {', '.join(refused)} cannot be written")
        return attrs.evolve(_extract(model, data, device, Path(folder) / name, batch_size, key), notes=tuple(notes))
    raise StorageError(f"the embeddings cannot be cached: no folder can be written ({', '.join(refused)}); make one "
                       f"of them writable to this user")


def _extract(model: SpurModel, data: SpuriousData, device: Device, path: Path, batch_size: int,
             key: str) -> CacheResult:
    with atomic.writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = atomic.temporary_path(path)
        try:
            extract_to_file(model, data, device, tmp, batch_size, key)
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
