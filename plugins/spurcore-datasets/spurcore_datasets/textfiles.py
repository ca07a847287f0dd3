"""The one way every dataset reads a text file (CSV, TSV, TXT list): as UTF-8, with or without
a byte-order mark (Excel and Notepad write one), lines ending in `\\n`, `\\r\\n` or `\\r` and
counted from 1. A file that cannot be opened or is not UTF-8 is a `DataError` naming the file
and the line of the first bad byte."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from spurcore.api import DataError

ENCODING = "utf-8-sig"  # UTF-8; a leading byte-order mark is dropped


def read_lines(path: Path) -> list[str]:
    """The lines of a text file without their line ends: item i is line i + 1."""
    with _opened(path, newline=None) as handle:  # every line end read as "\n"
        text = handle.read()
    lines = text.split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def csv_records(path: Path, *, delimiter: str = ",", quoting: int = csv.QUOTE_MINIMAL) -> Iterator[tuple[int, list[str]]]:
    """(line, fields) of each record of a CSV file, the header included (line 1); a record
    starts on `line` and may span more (quoted cells with line breaks); a blank line is a
    record with no fields."""
    with _opened(path, newline="") as handle:  # the csv module reads quoted line breaks itself
        reader = csv.reader(handle, delimiter=delimiter, quoting=quoting)
        line = 1
        try:
            for record in reader:
                yield line, record
                line = reader.line_num + 1
        except csv.Error as exc:
            raise DataError(f"{path} line {line}: malformed ({exc})") from None


@contextmanager
def _opened(path: Path, *, newline: str | None) -> Iterator[IO[str]]:
    try:
        handle = open(path, encoding=ENCODING, newline=newline)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    with handle:
        try:
            yield handle
        except UnicodeDecodeError:
            raise _not_utf8(path) from None


def _not_utf8(path: Path) -> DataError:
    """The error naming the first byte of `path` that is not UTF-8 and its line. The decoder of
    an open text file reads ahead in chunks and counts its offsets from the chunk, so the file is
    read again, in binary, and each line decoded alone: a multi-byte character never holds a
    b"\\n", and the offset in that line's exception places the bad byte exactly."""
    line, offset = 1, 0
    with open(path, "rb") as handle:
        for raw in handle:  # split at b"\n" only; a lone b"\r" also ends a line
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                line += _lone_cr(raw[: exc.start])
                return DataError(f"{path} line {line}: not UTF-8 (byte 0x{raw[exc.start]:02x} at offset "
                                 f"{offset + exc.start}); save the file as UTF-8")
            line += 1 + _lone_cr(raw)
            offset += len(raw)
    return DataError(f"{path}: not UTF-8; save the file as UTF-8")  # the file changed while read


def _lone_cr(data: bytes) -> int:
    """Line ends that are a b"\\r" alone (old Mac files), which text reading counts as lines too."""
    return data.count(b"\r") - data.count(b"\r\n")
