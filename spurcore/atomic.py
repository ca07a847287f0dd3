"""Atomic file writes: a finished result is never left half-written.

Everything a run writes goes to a temporary sibling of the target (`.<name>.<random>.tmp`),
is flushed to disk, gets the mode the user's umask gives new files, and is renamed over the
target in one step. A writer that cannot hand over a file object (HDF5) asks for
`temporary_path(target)` and renames it itself; `is_temporary` recognises every such leftover
of a killed writer, so the next run in the folder can remove them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TEMPORARY = re.compile(r"^\..+\.[0-9a-z_]+\.tmp$")
_umask_lock = threading.Lock()


def temporary_path(path: str | Path) -> Path:
    """A fresh temporary sibling of `path`, named so that `is_temporary` knows it."""
    path = Path(path)
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def is_temporary(path: str | Path) -> bool:
    return bool(TEMPORARY.match(Path(path).name))


def file_mode() -> int:
    """The mode a new file gets under the process's umask (0666 & ~umask)."""
    with _umask_lock:  # reading the umask means setting it; keep other threads out meanwhile
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary sibling of `path` for writing; rename it over `path` on success.
    In data-parallel runs only rank 0 writes: the other ranks write into a buffer dropped here."""
    from spurcore import distributed

    if not distributed.writes_files():
        yield io.BytesIO() if "b" in mode else io.StringIO()
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file_mode())
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_figure(fig: Any, path: str | Path, **savefig: Any) -> None:
    """Save a matplotlib figure as PNG atomically, then close it (figures hold memory until closed)."""
    import matplotlib.pyplot as plt

    try:
        with atomic_open(path, "wb") as handle:
            fig.savefig(handle, format="png", **savefig)
    finally:
        plt.close(fig)
