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


@attrs.frozen
class Lines:
    """Where each row of a file starts, for messages: `lines(i)` is "path line N"."""

    path: Path
    numbers: Sequence[int]

    def __call__(self, i: int) -> str:
        return f"{self.path} line {self.numbers[i]}"


@attrs.frozen
class Rows:
    """Columns read from a CSV file, and the line each row starts on (quoted cells may span
    lines, as CivilComments' comments do)."""

    columns: Mapping[str, list[str]]
    lines: Lines

    def __getitem__(self, column: str) -> list[str]:
        return self.columns[column]

    def __len__(self) -> int:
        return len(self.lines.numbers)


def read_csv(path: Path, columns: Sequence[str], *, delimiter: str = ",",
             quoting: int = csv.QUOTE_MINIMAL) -> Rows:
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
        starts, previous = [], reader.line_num
        try:
            for row in reader:
                start, previous = previous + 1, reader.line_num
                if not row:
                    continue
                if len(row) <= max(where):
                    raise DataError(f"{path} line {start}: {len(row)} fields, expected {len(header)}")
                starts.append(start)
                for c, i in zip(columns, where):
                    out[c].append(row[i])
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataError(f"{path} line {reader.line_num}: malformed ({exc})") from None
    if not starts:
        raise DataError(f"{path}: no rows")
    return Rows(out, Lines(path, starts))


def integers(rows: Rows, column: str, allowed: Sequence[int] | None = None) -> np.ndarray:
    """Parse a column of integer labels (`1`, `1.0`), each one of `allowed` (default: any >= 0)."""
    values = rows[column]
    out = np.empty(len(values), dtype=np.int64)
    for i, text in enumerate(values):
        try:
            number = float(text)
        except ValueError:
            raise DataError(f"{rows.lines(i)}: column {column!r} is {text!r}, not a number") from None
        if number != int(number) or (int(number) not in allowed if allowed is not None else number < 0):
            expected = ", ".join(map(str, allowed)) if allowed is not None else "0 or more"
            raise DataError(f"{rows.lines(i)}: column {column!r} is {text!r}, outside {expected}")
        out[i] = int(number)
    return out


def fractions(rows: Rows, column: str) -> np.ndarray:
    """Parse a column of numbers (an empty cell counts as 0)."""
    out = np.zeros(len(rows), dtype=np.float64)
    for i, text in enumerate(rows[column]):
        if text.strip():
            try:
                out[i] = float(text)
            except ValueError:
                raise DataError(f"{rows.lines(i)}: column {column!r} is {text!r}, not a number") from None
    return out


SPLIT_NAMES = {"0": "train", "1": "val", "2": "test", "train": "train", "val": "val", "valid": "val",
               "validation": "val", "test": "test"}


def split_rows(values: Sequence[str], lines: Lines, column: str = "split", *,
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
                raise DataError(f"{lines(i)}: column {column!r} is {text!r}, not 0/1/2 or train/val/test")
            name = key
        names.append(name)
    order = np.asarray(names)
    return {str(name): np.flatnonzero(order == name) for name in dict.fromkeys(names)}


def image_paths(root: Path, names: Sequence[str], lines: Lines, *, absolute_ok: bool) -> list[Path]:
    """The path of each named image (see `_image_path`)."""
    return [_image_path(root, name, lines(i), absolute_ok=absolute_ok) for i, name in enumerate(names)]


def _image_path(root: Path, name: str, where: str, *, absolute_ok: bool) -> Path:
    """`root/name`, refusing a relative name that leads outside `root` (`../x`)."""
    name = name.strip()
    if not name:
        raise DataError(f"{where}: empty file name")
    candidate = Path(name)
    if candidate.is_absolute():
        if not absolute_ok:
            raise DataError(f"{where}: {name!r} is an absolute path; this format names files "
                            f"relative to the dataset folder {root}")
        return candidate
    full = Path(os.path.normpath(root / candidate))
    if full != root and root not in full.parents:
        raise DataError(f"{where}: {name!r} leads outside the dataset folder {root}; refused")
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


def duplicates(ids: Sequence[str], lines: Lines, column: str) -> None:
    """Refuse a repeated id, naming both lines."""
    seen: dict[str, int] = {}
    for i, value in enumerate(ids):
        if value in seen:
            raise DataError(f"{lines(i)}: {column} {value!r} repeats line {lines.numbers[seen[value]]}")
        seen[value] = i
