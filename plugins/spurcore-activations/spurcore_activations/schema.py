"""The file layout, shared by the writer and the reader.

    /                 attrs: schema_version, config_hash, source, reduce, splits, class_names,
                             attr_names, group_names, n_attrs (JSON lists as strings)
    /index            compound rows (index, y, a, group, split, stage, epoch), one per example
                      written; `split` is a position in the `splits` attribute, `a` and
                      `group` are -1 where the split has no attribute labels
    /committed        int64 (1,): rows fully written and flushed; readers read no further
    /modules/<name>   float32 (rows, units), row i belongs to /index row i; attrs: units,
                      reduce, example_shape (the module's output shape per example)
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

SCHEMA_VERSION = 1

INDEX_DTYPE = np.dtype([
    ("index", "<i8"), ("y", "<i8"), ("a", "<i8"), ("group", "<i8"),
    ("split", "u1"), ("stage", "<i2"), ("epoch", "<i4"),
])
INDEX_FIELDS = INDEX_DTYPE.names

CHUNK_MIN = 10 * 1024
CHUNK_MAX = 1024 * 1024


def config_hash(data: Any) -> str:
    """sha256 of plain data (a resolved pipeline, or the options of an extraction)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def chunk_shape(units: int | None, itemsize: int, rows_hint: int = 512) -> tuple[int, ...]:
    """Chunks by rows, an eighth of a batch (`rows_hint` rows) each, kept within
    10 KiB..1 MiB; a row wider than 1 MiB is split into column blocks of 1 MiB.

    Small chunks matter under SWMR: the chunk a flush leaves half full is written again,
    compressed to a new size, when the next batch completes it, and the space of the first
    write is not reused. An eighth of a batch bounds that waste to a few percent.
    """
    row = itemsize * (units or 1)
    if row > CHUNK_MAX:
        return (1, max(1, CHUNK_MAX // itemsize))
    lo, hi = -(-CHUNK_MIN // row), CHUNK_MAX // row
    rows = min(max(rows_hint // 8, lo), hi)
    return (rows,) if units is None else (rows, units)
