"""From a validated `Table` to the kernel's `SpuriousData`: lazy image files or tokenized
text per split, the training split with its augmented view."""

from __future__ import annotations

import sys

import attrs
import numpy as np

from spurcore.api import Normalization, SplitData, SpuriousData, available_cores
from spurcore_datasets.images import (
    IMAGENET_MEAN, IMAGENET_STD, CachedImages, ImageFiles, cached_eval_transform, cached_train_transform, eval_resize,
    eval_transform, train_transform, unreadable,
)
from spurcore_datasets.tables import SHOWN, Lines, Table, validate


def to_data(table: Table, options) -> SpuriousData:
    if table.kind == "image":
        if options.bad_images == "skip":
            table = without_unreadable(table)
        return _images(table, options)
    return _texts(table, options)


def _images(table: Table, options) -> SpuriousData:
    if options.cache == "decoded":
        return _cached_images(table, options)
    evaluate = eval_transform(options.image_size)
    augmented = train_transform(options.image_size, options.augment)
    splits = {}
    for name, rows in table.splits.items():
        paths, lines = [table.items[i] for i in rows], lines_of(table, rows)
        splits[name] = SplitData(name=name, inputs=ImageFiles(paths, evaluate, lines), y=table.y[rows],
                                 a=table.a[rows],
                                 train_inputs=ImageFiles(paths, augmented, lines) if name == "train" else None)
    return _image_data(table, splits, options)


def _cached_images(table: Table, options) -> SpuriousData:
    """Every split from its decoded-image cache (built first where missing or stale)."""
    stores = cached_splits(table, options)
    side = cache_side(options)
    evaluate = cached_eval_transform(options.image_size, side)
    augmented = cached_train_transform(options.image_size, options.augment, side)
    splits = {}
    for name, rows in table.splits.items():
        store = stores[name]
        splits[name] = SplitData(name=name, inputs=CachedImages(store, evaluate), y=table.y[rows], a=table.a[rows],
                                 train_inputs=CachedImages(store, augmented) if name == "train" else None)
    return _image_data(table, splits, options)


def lines_of(table: Table, rows) -> Lines | None:
    """The metadata line of each of `rows`, for messages (None where the table has none)."""
    return None if table.lines is None else table.lines.only(rows)


def cache_side(options) -> int:
    return options.cache_side or eval_resize(options.image_size)


def cached_splits(table: Table, options, workers: int | None = None) -> dict:
    """The cache `Store` of every split of an image table, built where missing or stale
    (decoding in one worker per core unless `workers` says otherwise)."""
    from spurcore_datasets import cache

    folder = cache.dataset_folder(options.cache_dir or cache.default_folder(), table.name, table.source)
    workers = available_cores() if workers is None else workers
    return {name: cache.open_or_build(folder, name, [table.items[i] for i in rows], cache_side(options), workers,
                                      lines_of(table, rows))
            for name, rows in table.splits.items()}


def _image_data(table: Table, splits: dict, options) -> SpuriousData:
    return SpuriousData(name=table.name, splits=splits, class_names=table.class_names, attr_names=table.attr_names,
                        input_shape=(3, options.image_size, options.image_size),
                        normalization=Normalization(IMAGENET_MEAN, IMAGENET_STD))


def _texts(table: Table, options) -> SpuriousData:
    from spurcore_text import TokenizedText

    splits = {}
    for name, rows in table.splits.items():
        texts = [table.items[i] for i in rows]
        pairs = None if table.pairs is None else [table.pairs[i] for i in rows]
        inputs = TokenizedText(texts, options.tokenizer, options.max_length, pairs=pairs)
        splits[name] = SplitData(name=name, inputs=inputs, y=table.y[rows], a=table.a[rows])
    return SpuriousData(name=table.name, splits=splits, class_names=table.class_names, attr_names=table.attr_names)


def without_unreadable(table: Table) -> Table:
    """The table without the images that fail to decode; says how many it left out."""
    bad = unreadable(table.items, table.lines)
    if not bad:
        return table
    dropped = np.array([i for i, _ in bad])
    keep = np.setdiff1d(np.arange(len(table.items)), dropped)
    new_index = np.full(len(table.items), -1)
    new_index[keep] = np.arange(len(keep))
    splits = {name: new_index[rows][new_index[rows] >= 0] for name, rows in table.splits.items()}
    shown = "; ".join(reason for _, reason in bad[:SHOWN])
    print(f"{table.name}: skipping {len(bad)} unreadable image(s) of {len(table.items)}: {shown}", file=sys.stderr)
    return validate(attrs.evolve(table, items=[table.items[i] for i in keep], y=table.y[keep], a=table.a[keep],
                                 splits={k: v for k, v in splits.items() if len(v)},
                                 lines=None if table.lines is None else table.lines.only(keep)))
