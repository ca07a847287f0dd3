"""A dataset read from disk, before any tensor exists: one row per example (an image path
or a text), its class `y`, its attribute `a`, and the rows of each split.

Every loader reads its own format into a `Table`; `validate` then runs the checks every
format shares (splits present, every group populated, files present, no duplicates), so
`spur data check` and the start of a run refuse the same inputs with the same message.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from spurcore.data import REQUIRED_SPLITS, group_ids
from spurcore.errors import DataError

SHOWN = 5  # how many offending paths or rows a message lists
csv.field_size_limit(2**31 - 1)  # CivilComments has long comments


@attrs.frozen(kw_only=True)
class Table:
    """Rows of one dataset. `items` are image paths (`kind == "image"`) or texts (`"text"`,
    with `pairs` holding the second text of a pair); `splits` maps a split name to its rows."""

    name: str
    source: Path
    kind: str
    items: Sequence[Any]
    y: np.ndarray
    a: np.ndarray
    splits: Mapping[str, np.ndarray]
    class_names: tuple[str, ...]
    attr_names: tuple[str, ...]
    pairs: Sequence[str] | None = None

    def group_counts(self) -> dict[str, list[int]]:
        """Examples per group (g = y * n_attrs + a) in every split."""
        n = len(self.class_names) * len(self.attr_names)
        counts = {}
        for split, rows in self.splits.items():
            g = group_ids(self.y[rows], self.a[rows], len(self.attr_names))
            counts[split] = np.bincount(g, minlength=n).tolist()
        return counts

    @property
    def group_names(self) -> tuple[str, ...]:
        return tuple(f"{c}/{a}" for c in self.class_names for a in self.attr_names)


# --- reading ---------------------------------------------------------------------------------


def find_file(root: str | Path, name: str, folders: Sequence[str] = ()) -> Path:
    """`root/name`, or `root/<folder>/name` for a known dataset folder: `root` may be the
    dataset's own folder or its parent, as WILDS and SubpopBench users pass it."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: no such directory (the dataset root)")
    candidates = [root / name] + [root / folder / name for folder in folders]
    for path in candidates:
        if path.is_file():
            return path
    raise DataError(f"{root}: no {name} found; looked for " + ", ".join(str(p) for p in candidates))


def read_csv(path: Path, columns: Sequence[str], *, delimiter: str = ",",
             quoting: int = csv.QUOTE_MINIMAL) -> dict[str, list[str]]:
    """The named columns of a CSV file (line numbers in messages count the header as line 1)."""
    try:
        handle = open(path, newline="", encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    with handle:
        reader = csv.reader(handle, delimiter=delimiter, quoting=quoting)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: empty file (expected a header with {', '.join(columns)})")
        header = [h.strip() for h in header]
        missing = [c for c in columns if c not in header]
        if missing:
            raise DataError(f"{path}: no column {', '.join(map(repr, missing))} (columns: {', '.join(header)})")
        where = [header.index(c) for c in columns]
        out: dict[str, list[str]] = {c: [] for c in columns}
        try:
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) < len(header) and len(row) <= max(where):
                    raise DataError(f"{path} line {line}: {len(row)} fields, expected {len(header)}")
                for c, i in zip(columns, where):
                    out[c].append(row[i])
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataError(f"{path} line {reader.line_num}: malformed ({exc})") from None
    if not out[columns[0]]:
        raise DataError(f"{path}: no rows")
    return out


def integers(values: Sequence[str], path: Path, column: str, allowed: Sequence[int]) -> np.ndarray:
    """Parse a column of integer labels (`1`, `1.0`), each one of `allowed`."""
    out = np.empty(len(values), dtype=np.int64)
    for i, text in enumerate(values):
        try:
            number = float(text)
        except ValueError:
            raise DataError(f"{path} line {i + 2}: column {column!r} is {text!r}, not a number") from None
        if number != int(number) or int(number) not in allowed:
            raise DataError(f"{path} line {i + 2}: column {column!r} is {text!r}, outside "
                            f"{', '.join(map(str, allowed))}")
        out[i] = int(number)
    return out


def fractions(values: Sequence[str], path: Path, column: str) -> np.ndarray:
    """Parse a column of numbers (an empty cell counts as 0)."""
    out = np.zeros(len(values), dtype=np.float64)
    for i, text in enumerate(values):
        if text.strip():
            try:
                out[i] = float(text)
            except ValueError:
                raise DataError(f"{path} line {i + 2}: column {column!r} is {text!r}, not a number") from None
    return out


SPLIT_NAMES = {"0": "train", "1": "val", "2": "test", "train": "train", "val": "val", "valid": "val",
               "validation": "val", "test": "test"}


def split_rows(values: Sequence[str], path: Path, column: str = "split", *,
               extra: bool = False) -> dict[str, np.ndarray]:
    """Rows of each split: 0/1/2 (or train/val/test) are the standard splits; with `extra`, any
    other value (SubpopBench's `mixed_rand`, ...) names an extra evaluation split."""
    names = []
    for i, text in enumerate(values):
        key = text.strip()
        key = key[:-2] if key.endswith(".0") else key
        name = SPLIT_NAMES.get(key.lower())
        if name is None:
            if not extra or not key:
                raise DataError(f"{path} line {i + 2}: column {column!r} is {text!r}, not 0/1/2 or train/val/test")
            name = key
        names.append(name)
    order = np.asarray(names)
    return {str(name): np.flatnonzero(order == name) for name in dict.fromkeys(names)}


def image_path(root: Path, name: str, path: Path, line: int, *, absolute_ok: bool) -> Path:
    """`root/name`, refusing a relative name that leads outside `root` (`../x`)."""
    name = name.strip()
    if not name:
        raise DataError(f"{path} line {line}: empty file name")
    candidate = Path(name)
    if candidate.is_absolute():
        if not absolute_ok:
            raise DataError(f"{path} line {line}: {name!r} is an absolute path; this format names files "
                            f"relative to the dataset folder {root}")
        return candidate
    full = Path(os.path.normpath(root / candidate))
    if full != root and root not in full.parents:
        raise DataError(f"{path} line {line}: {name!r} leads outside the dataset folder {root}; refused")
    return full


# --- the checks every format shares ----------------------------------------------------------


def validate(table: Table) -> Table:
    """Refuse a table with a missing or empty split, an empty group, duplicated or missing files."""
    for split in REQUIRED_SPLITS:
        if split not in table.splits or len(table.splits[split]) == 0:
            raise DataError(f"{table.source}: no rows in split {split!r} (every dataset needs train, val and test)")
    n_attrs = len(table.attr_names)
    for split in REQUIRED_SPLITS:
        counts = table.group_counts()[split]
        for g, count in enumerate(counts):
            if count == 0:
                raise DataError(
                    f"{table.source}: group {table.group_names[g]} (y={g // n_attrs}, a={g % n_attrs}) has no "
                    f"examples in split {split!r}; worst-group metrics need every group: check the label columns"
                )
    if table.kind == "image":
        _unique_files(table)
        _files_exist(table)
    return table


def _unique_files(table: Table) -> None:
    seen: dict[Any, int] = {}
    for i, item in enumerate(table.items):
        if item in seen:
            raise DataError(f"{table.source}: {item} is listed twice (rows {seen[item] + 1} and {i + 1})")
        seen[item] = i


def _files_exist(table: Table) -> None:
    missing = [p for p in table.items if not os.path.isfile(p)]
    if missing:
        shown = ", ".join(str(p) for p in missing[:SHOWN])
        more = f" and {len(missing) - SHOWN} more" if len(missing) > SHOWN else ""
        raise DataError(f"{table.source}: {len(missing)} of {len(table.items)} image files are missing: {shown}{more}")


def duplicates(ids: Sequence[str], path: Path, column: str) -> None:
    """Refuse a repeated id, naming both lines."""
    seen: dict[str, int] = {}
    for i, value in enumerate(ids):
        if value in seen:
            raise DataError(f"{path} line {i + 2}: {column} {value!r} repeats line {seen[value] + 2}")
        seen[value] = i
