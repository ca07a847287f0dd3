"""A dataset read from disk, before any tensor exists: one row per example (an image path
or a text), its class `y`, its attribute `a`, and the rows of each split.

Every loader reads its own format into a `Table` (its text files through `textfiles`);
`validate` then runs the checks every format shares (splits present, every group populated,
files present, no duplicates), so `spur data check` and the start of a run refuse the same
inputs with the same message. Messages name a row by its file line: `<file> line N: ...`,
where a CSV header is line 1 and its first row line 2.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from spurcore.api import DataError
from spurcore_datasets.textfiles import csv_records

SHOWN = 5  # how many offending paths or rows a message lists
csv.field_size_limit(2**31 - 1)  # CivilComments has long comments


@attrs.frozen
class Lines:
    """Where each row of a file starts, for messages: `lines(i)` is "path line N"."""

    path: Path
    numbers: Sequence[int]

    def __call__(self, i: int) -> str:
        return f"{self.path} line {self.numbers[i]}"

    def only(self, rows: Sequence[int]) -> Lines:
        return Lines(self.path, [self.numbers[i] for i in rows])


@attrs.frozen(kw_only=True)
class Table:
    """Rows of one dataset. `items` are image paths (`kind == "image"`) or texts (`"text"`,
    with `pairs` holding the second text of a pair); `splits` maps a split name to its rows;
    `lines`, where the rows come from a file, the line of each."""

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
    lines: Lines | None = None

    def group_counts(self) -> dict[str, list[int]]:
        """Examples per group (g = y * n_attrs + a) in every split."""
        from spurcore.api import group_ids  # on use: its module imports torch, reading a table needs none

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
class Rows:
    """Columns read from a CSV file, its header, and the line each row starts on (quoted cells
    may span lines, as CivilComments' comments do)."""

    columns: Mapping[str, list[str]]
    lines: Lines
    header: list[str]

    def __getitem__(self, column: str) -> list[str]:
        return self.columns[column]

    def __len__(self) -> int:
        return len(self.lines.numbers)


def read_csv(path: Path, columns: Sequence[str] | None, *, delimiter: str = ",",
             quoting: int = csv.QUOTE_MINIMAL) -> Rows:
    """The named columns (None: every column) of a CSV file with a header (line 1)."""
    with closing(csv_records(path, delimiter=delimiter, quoting=quoting)) as records:
        _, header = next(records, (1, None))
        if header is None:
            wanted = f" with {', '.join(columns)}" if columns else ""
            raise DataError(f"{path}: empty file (expected a header{wanted})")
        header = [h.strip() for h in header]
        columns = list(header if columns is None else columns)
        missing = [c for c in columns if c not in header]
        if missing:
            raise DataError(f"{path}: no column {', '.join(map(repr, missing))} (columns: {', '.join(header)})")
        where = [header.index(c) for c in columns]
        out: dict[str, list[str]] = {c: [] for c in columns}
        starts = []
        for line, row in records:
            if not row:
                continue
            if len(row) <= max(where, default=-1):
                raise DataError(f"{path} line {line}: {len(row)} fields, expected {len(header)}")
            starts.append(line)
            for c, i in zip(columns, where):
                out[c].append(row[i])
    if not starts:
        raise DataError(f"{path}: no rows")
    return Rows(out, Lines(path, starts), header)


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
    inside = Inside(root)
    return [_image_path(inside, name, lines(i), absolute_ok=absolute_ok) for i, name in enumerate(names)]


def _image_path(inside: Inside, name: str, where: str, *, absolute_ok: bool) -> Path:
    """`root/name`, refusing a relative name that leads outside `root`, by `../` or through a
    symlink. Absolute names, where the format allows them, are taken as they are."""
    name = name.strip()
    if not name:
        raise DataError(f"{where}: empty file name")
    if "\0" in name:
        raise DataError(f"{where}: file name {name!r} holds a NUL byte, which no file name can; fix that line")
    if os.path.isabs(name):
        if not absolute_ok:
            raise DataError(f"{where}: {name!r} is an absolute path; this format names files "
                            f"relative to the dataset folder {inside.root}")
        return Path(name)
    full = os.path.normpath(os.path.join(inside.folder, name))  # strings: CelebA names 200,000 files
    if not inside.holds(full):
        raise DataError(f"{where}: {name!r} leads outside the dataset folder {inside.root}; refused")
    inside.check(full, f"{where}: {name!r}")
    return Path(full)


class Inside:
    """Whether paths lie inside the dataset folder `root`: by name (`holds`), and once every
    symlink is resolved (`check`; the root itself may be a link). Each directory is resolved
    once, so `check` costs one `lstat` per file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.folder = os.path.normpath(root)
        self._real_root = os.path.realpath(root)
        self._real_dirs: dict[str, str] = {}

    def holds(self, path: str) -> bool:
        """`path` (normalized) names the root or something below it."""
        return _below(path, self.folder)

    def check(self, path: str | Path, what: str) -> None:
        """Refuse `path` (named `what` in the message) if it resolves to a place outside the root."""
        parent, name = os.path.split(os.fspath(path))
        real_parent = self._real_dirs.get(parent)
        if real_parent is None:
            real_parent = self._real_dirs[parent] = os.path.realpath(parent)
        real = os.path.join(real_parent, name)
        if os.path.islink(real):
            real = os.path.realpath(real)
        if not _below(real, self._real_root):
            raise DataError(f"{what} leads outside the dataset folder {self.root} through a symlink (to {real}); "
                            f"refused")


def _below(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder if folder.endswith(os.sep) else folder + os.sep)


# --- the checks every format shares ----------------------------------------------------------


def validate(table: Table) -> Table:
    """Refuse a table with a missing or empty split, an empty group, duplicated or missing files."""
    from spurcore.api import REQUIRED_SPLITS  # on use, as group_ids

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
            if table.lines is None:
                raise DataError(f"{table.source}: file {item} is listed twice")
            raise DataError(f"{table.lines(i)}: file {item} repeats line {table.lines.numbers[seen[item]]}")
        seen[item] = i


def _files_exist(table: Table) -> None:
    missing = [i for i, p in enumerate(table.items) if not os.path.isfile(p)]
    if missing:
        shown = ", ".join(str(table.items[i]) + (f" ({table.lines(i)})" if table.lines else "") for i in missing[:SHOWN])
        more = f" and {len(missing) - SHOWN} more" if len(missing) > SHOWN else ""
        raise DataError(f"{table.source}: {len(missing)} of {len(table.items)} image files are missing: {shown}{more}")


def file_index(paths: Sequence[Path], digest: Any) -> Any:
    """`digest` (a hashlib object) updated with each file's path, size and modification time,
    in order: what files a split reads, cheaply (one `stat` per file, no read)."""
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest


def duplicates(ids: Sequence[str], lines: Lines, column: str) -> None:
    """Refuse a repeated id, naming both lines."""
    seen: dict[str, int] = {}
    for i, value in enumerate(ids):
        if value in seen:
            raise DataError(f"{lines(i)}: {column} {value!r} repeats line {lines.numbers[seen[value]]}")
        seen[value] = i
