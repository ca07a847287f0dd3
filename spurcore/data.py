"""Typed data: splits with class and attribute labels, and the batches the runner feeds.

Every example is `(index, x, y, a)`: `index` is its position in its split and stays fixed
across epochs (example-tied masks and per-example statistics key on it). The group of an
example is `y * n_attrs + a`, computed here and nowhere else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import attrs
import numpy as np
import torch

from spurcore.errors import DataError

REQUIRED_SPLITS = ("train", "val", "test")
MISSING_ATTRIBUTE = -1


def group_ids(y: np.ndarray, a: np.ndarray, n_attrs: int) -> np.ndarray:
    """The group of each example: y * n_attrs + a."""
    return np.asarray(y, dtype=np.int64) * n_attrs + np.asarray(a, dtype=np.int64)


def _labels(value: Any) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"labels must be a 1-d integer array, got shape {array.shape} dtype {array.dtype}")
    array = array.astype(np.int64, copy=True)
    array.setflags(write=False)
    return array


def _optional_labels(value: Any) -> np.ndarray | None:
    return None if value is None else _labels(value)


@attrs.frozen(kw_only=True)
class SplitData:
    """One split. `inputs` is either a tensor holding every input (row i is example i),
    or a map-style `torch.utils.data.Dataset` whose item i is the input of example i
    (an image tensor, or a dict of tensors such as tokenized text: batches then carry a dict).
    `a` is None when the split has no attribute labels.

    `train_inputs`, when given, holds the same examples with training augmentation (random
    crops, flips); only the training loop reads it, so evaluation and embeddings always see
    the deterministic `inputs`."""

    name: str
    inputs: Any
    y: np.ndarray = attrs.field(converter=_labels)
    a: np.ndarray | None = attrs.field(default=None, converter=_optional_labels)
    train_inputs: Any = None

    def __attrs_post_init__(self) -> None:
        n = len(self.inputs)
        if len(self.y) != n:
            raise DataError(f"split {self.name!r}: {n} inputs but {len(self.y)} class labels")
        if self.a is not None and len(self.a) != n:
            raise DataError(f"split {self.name!r}: {n} inputs but {len(self.a)} attribute labels")
        if self.train_inputs is not None and len(self.train_inputs) != n:
            raise DataError(f"split {self.name!r}: {n} inputs but {len(self.train_inputs)} training inputs")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def has_attributes(self) -> bool:
        return self.a is not None

    @property
    def in_memory(self) -> bool:
        return isinstance(self.inputs, torch.Tensor)


def _channels(value: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in value)


@attrs.frozen
class Normalization:
    """How image inputs were normalized: each channel is `(pixel - mean) / std`, with pixels in
    [0, 1]. A backbone whose pretrained weights expect other statistics converts from these."""

    mean: tuple[float, ...] = attrs.field(converter=_channels)
    std: tuple[float, ...] = attrs.field(converter=_channels)

    def __attrs_post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean or min(self.std) <= 0:
            raise DataError(f"normalization needs one mean and one positive std per channel, got {self}")


@attrs.frozen(kw_only=True)
class SpuriousData:
    """What a dataset plugin builds: named splits (train, val, test, and any extra
    evaluation splits) plus the names of classes and attribute values.

    `provenance` records how the data was made, for components that must not see what
    val and test were made from: waterdigits gives the source digits each split draws on
    (`{"sklearn_digits": {"train": indices, "val": ..., "test": ...}}`), and digit
    pretraining reads only the training split's. `normalization` says how image inputs were
    normalized (None: the dataset does not say, or its inputs are not images)."""

    name: str
    splits: Mapping[str, SplitData] = attrs.field(converter=dict)
    class_names: tuple[str, ...] = attrs.field(converter=tuple)
    attr_names: tuple[str, ...] = attrs.field(converter=tuple)
    input_shape: tuple[int, ...] = attrs.field(converter=tuple, default=())
    provenance: Mapping[str, Any] = attrs.field(factory=dict, converter=dict)
    normalization: Normalization | None = None

    def __attrs_post_init__(self) -> None:
        missing = [s for s in REQUIRED_SPLITS if s not in self.splits]
        if missing:
            raise DataError(f"dataset {self.name!r} has no {', '.join(missing)} split")
        for split in self.splits.values():
            if len(split) == 0:
                raise DataError(f"dataset {self.name!r}: split {split.name!r} is empty")
            bad = np.flatnonzero((split.y < 0) | (split.y >= self.n_classes))
            if bad.size:
                raise DataError(
                    f"dataset {self.name!r}, split {split.name!r}, row {bad[0]}: class label "
                    f"{split.y[bad[0]]} outside 0..{self.n_classes - 1}"
                )
            if split.a is not None:
                bad = np.flatnonzero((split.a < 0) | (split.a >= self.n_attrs))
                if bad.size:
                    raise DataError(
                        f"dataset {self.name!r}, split {split.name!r}, row {bad[0]}: attribute "
                        f"{split.a[bad[0]]} outside 0..{self.n_attrs - 1}"
                    )

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_attrs(self) -> int:
        return len(self.attr_names)

    @property
    def n_groups(self) -> int:
        return self.n_classes * self.n_attrs

    @property
    def group_names(self) -> tuple[str, ...]:
        """Group g = y * n_attrs + a is named "class/attribute"."""
        return tuple(f"{c}/{a}" for c in self.class_names for a in self.attr_names)

    def groups(self, split: str) -> np.ndarray | None:
        data = self.splits[split]
        return None if data.a is None else group_ids(data.y, data.a, self.n_attrs)

    def group_counts(self, split: str) -> dict[str, int] | None:
        g = self.groups(split)
        if g is None:
            return None
        counts = np.bincount(g, minlength=self.n_groups)
        return dict(zip(self.group_names, counts.tolist()))


@attrs.frozen
class Batch:
    """A minibatch: `index` (positions in the split), `x`, `y`, and `a`
    (`MISSING_ATTRIBUTE` where the split has no attribute labels)."""

    index: torch.Tensor
    x: Any
    y: torch.Tensor
    a: torch.Tensor

    def __len__(self) -> int:
        return len(self.index)


CONTENT_KEY = "content_key"


def content_digest(data: SpuriousData) -> str:
    """What the data is, as a digest a derived cache (embeddings, predictions) keys on: every
    split's name, size, class and attribute labels, and its inputs: a tensor's bytes, or a
    dataset's `content_key()` (an image folder's file index: each file's path, size and
    modification time) with the positions a `Subset` takes of it. A dataset without
    `content_key` counts by its type and length alone, so one read from files should define
    it. Reads every label once (and hashes in-memory inputs): compute it once per build."""
    digest = hashlib.sha256(f"{data.name}\0{data.class_names}\0{data.attr_names}\0".encode())
    for name, split in sorted(data.splits.items()):
        digest.update(f"split {name} {len(split)}\0".encode())
        digest.update(np.ascontiguousarray(split.y))
        digest.update(b"no attributes" if split.a is None else np.ascontiguousarray(split.a))
        _digest_inputs(digest, split.inputs)
    return digest.hexdigest()


def _digest_inputs(digest: Any, inputs: Any) -> None:
    if isinstance(inputs, torch.Tensor):
        digest.update(f"tensor {inputs.dtype} {tuple(inputs.shape)}\0".encode())
        digest.update(inputs.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        return
    while isinstance(inputs, torch.utils.data.Subset):
        digest.update(b"subset\0")
        digest.update(np.ascontiguousarray(inputs.indices, dtype=np.int64))
        inputs = inputs.dataset
    key = getattr(inputs, CONTENT_KEY, None)
    described = key() if callable(key) else f"{type(inputs).__module__}.{type(inputs).__qualname__} of {len(inputs)}"
    digest.update(f"dataset {described}\0".encode())


def _rows(inputs: Any, positions: np.ndarray) -> Any:
    if inputs is None:
        return None
    if isinstance(inputs, torch.Tensor):
        return inputs[torch.from_numpy(positions)]
    return torch.utils.data.Subset(inputs, positions.tolist())


def subset(split: SplitData, positions: np.ndarray, name: str) -> SplitData:
    """The examples of `split` at `positions`, as a split of their own (positions renumbered)."""
    return SplitData(name=name, inputs=_rows(split.inputs, positions), y=split.y[positions],
                     a=None if split.a is None else split.a[positions], train_inputs=_rows(split.train_inputs, positions))


def train_subset_positions(n: int, fraction: float, seed: int) -> np.ndarray:
    """The sorted positions of the training examples `[dataset] train_subset = fraction` keeps
    out of `n`: `max(1, round(fraction * n))` of them, the first of a permutation drawn by
    `numpy.random.default_rng(seed)` (uniform, whatever the groups), so that anyone can tell
    which examples a run trained on from its seed alone."""
    if fraction == 1:
        return np.arange(n)
    keep = max(1, round(fraction * n))
    return np.sort(np.random.default_rng(seed % 2**63).permutation(n)[:keep])


def keep_train_subset(data: SpuriousData, fraction: float, seed: int) -> SpuriousData:
    """`data` with its training split cut to `train_subset_positions` (positions renumbered)."""
    if fraction == 1:
        return data
    train = data.splits["train"]
    kept = subset(train, train_subset_positions(len(train), fraction, seed), "train")
    return attrs.evolve(data, splits={**data.splits, "train": kept})


HOLDOUT = "holdout"


def hold_out(data: SpuriousData, fraction: float, seed: int) -> SpuriousData:
    """`data` with `fraction` of every training group (every class without attribute labels)
    moved to a new split, "holdout", drawn by `numpy.random.default_rng(seed)`: data the
    model does not train on, for methods that fit on it (AFR, JTT-style identification)."""
    from spurcore.sampling import stratified_split

    if fraction == 0:
        return data
    if HOLDOUT in data.splits:
        raise DataError(f"dataset {data.name!r} already has a split named {HOLDOUT!r}; set [dataset] holdout = 0")
    train = data.splits["train"]
    labels = train.y if train.a is None else data.groups("train")
    kept, held = stratified_split(labels, fraction, np.random.default_rng(seed))
    splits = {**data.splits, "train": subset(train, kept, "train"), HOLDOUT: subset(train, held, HOLDOUT)}
    return attrs.evolve(data, splits=splits)


def iterate_batches(
    split: SplitData,
    order: Sequence[int] | torch.Tensor,
    batch_size: int,
    *,
    num_workers: int = 0,
    pin_memory: bool = False,
    augment: bool = False,
    device: torch.device | None = None,
    prefetch_factor: int | None = None,
) -> Iterator[Batch]:
    """Yield batches of `split` in `order` (from `split.train_inputs` when `augment` and present).

    In-memory splits are sliced directly (no per-example collation); dataset-backed splits
    go through a DataLoader over the same order (with `num_workers` worker processes, kept
    alive from one pass over the dataset to the next, `prefetch_factor` batches each, and
    pinned memory for CUDA), so batch composition is identical either way; so are the random
    augmentations, whatever `num_workers` (`_item_seed`). A dataset with a `batch_transform`
    (see `batch_transform_of`) yields raw items (uint8 images) and has that transform applied
    to each whole batch, on `device` when one is given (the batch's `x` then already lies
    there), else here.
    """
    order = torch.as_tensor(order, dtype=torch.long)
    y = torch.tensor(split.y)
    a = torch.tensor(split.a) if split.a is not None else torch.full_like(y, MISSING_ATTRIBUTE)
    inputs = split.train_inputs if augment and split.train_inputs is not None else split.inputs
    chunks = torch.split(order, batch_size)
    if isinstance(inputs, torch.Tensor):
        for idx in chunks:
            yield Batch(idx, inputs[idx], y[idx], a[idx])
        return
    finish = batch_transform_of(inputs)
    base = int(torch.randint(0, 2**62, (), dtype=torch.int64)) if augment else 0
    loader, sampler = _loader(inputs, num_workers, pin_memory, prefetch_factor)
    sampler.batches = [[(i, _item_seed(base, i)) for i in c.tolist()] for c in chunks]
    try:
        for idx, x in zip(chunks, loader):
            if finish is not None:
                x = finish(x if device is None else x.to(device, non_blocking=pin_memory))
            yield Batch(idx, x, y[idx], a[idx])
    except DataError as error:
        raise DataError(_worker_message(str(error))) from None
    finally:
        sampler.busy = False


def _item_seed(base: int, i: int) -> int:
    """The seed of example i's random augmentation in one pass: a function of the pass's base
    seed (drawn from the global torch RNG, which the runner seeds) and of i alone, so that the
    augmentation is the same with any number of workers and on a resumed run."""
    return (base ^ (i * 0x9E3779B97F4A7C15)) % 2**63


class _Batches(torch.utils.data.Sampler):
    """The batch sampler of a kept DataLoader: the batches of the current pass, set per pass."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []
        self.busy = True  # a pass is reading it; a second pass meanwhile gets a loader of its own

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _Seeded(torch.utils.data.Dataset):
    """Item (i, seed): item i of `dataset`, drawn with the torch RNG seeded to `seed` (in a
    worker the RNG is the worker's own; in this process it is put back afterwards)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        i, seed = key
        if torch.utils.data.get_worker_info() is not None:
            torch.default_generator.manual_seed(seed)
            return self.dataset[i]
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self.dataset[i]


LOADER_ATTRIBUTE = "_spurcore_loader"


def release_workers(data: SpuriousData) -> None:
    """Stop the worker processes `iterate_batches` keeps for the splits of `data` (the runner
    calls this when a run ends); a later pass starts new ones."""
    for split in data.splits.values():
        for inputs in (split.inputs, split.train_inputs):
            if LOADER_ATTRIBUTE in getattr(inputs, "__dict__", {}):
                delattr(inputs, LOADER_ATTRIBUTE)


def _loader(dataset: Any, num_workers: int, pin_memory: bool,
            prefetch_factor: int | None) -> tuple[torch.utils.data.DataLoader, _Batches]:
    """The DataLoader of `dataset` with these settings, kept on the dataset so that its workers
    persist from one pass to the next (`persistent_workers`); a new one when the settings
    change or the dataset cannot hold it. The loader draws nothing from the global RNG (its
    own generator seeds its workers), and each item's augmentation is seeded by `_item_seed`:
    so keeping the workers alive changes no result, and a resumed run repeats the
    uninterrupted one."""
    settings = (num_workers, pin_memory, prefetch_factor if num_workers else None)
    kept = getattr(dataset, LOADER_ATTRIBUTE, None)
    if kept is not None and kept[0] == settings and not kept[2].busy:
        kept[2].busy = True
        return kept[1], kept[2]
    sampler = _Batches()
    loader = torch.utils.data.DataLoader(
        _Seeded(dataset), batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
        prefetch_factor=settings[2], persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(0))
    if kept is None or not kept[2].busy:
        try:
            setattr(dataset, LOADER_ATTRIBUTE, (settings, loader, sampler))
        except AttributeError:  # a dataset with __slots__: a loader per pass
            pass
    return loader, sampler


def batch_transform_of(inputs: Any) -> Any:
    """The `batch_transform` of a map-style dataset (looking through `Subset`s), or None.

    A dataset defines `batch_transform` (a callable on a whole collated batch) when its items
    are not finished tensors: the decoded-image cache yields uint8 crops and converts and
    normalizes a batch at once, on the GPU when the run is on one."""
    while isinstance(inputs, torch.utils.data.Subset):
        inputs = inputs.dataset
    return getattr(inputs, "batch_transform", None)


def _worker_message(message: str) -> str:
    """A DataError raised in a DataLoader worker comes back wrapped in the worker's traceback;
    keep the dataset's own one-line message."""
    marker = f"{DataError.__name__}: "
    return message.rsplit(marker, 1)[-1].strip() if "Original Traceback" in message else message
