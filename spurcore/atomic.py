"""Atomic file writes: a finished result is never left half-written.

Everything a run writes goes to a temporary sibling of the target (`.<name>.<random>.tmp`),
is flushed to disk, gets the mode the user's umask gives new files, and is renamed over the
target in one step. A writer that cannot hand over a file object (HDF5) asks for
`temporary_path(target)` and renames it itself; `is_temporary` recognises every such leftover
of a killed writer, so the next run in the folder can remove them.

A write that fails because the disk is full or the folder is read-only raises `StorageError`,
one sentence naming the path (`storage_message`): never a library's traceback with "No space
left on device" buried in it (torch.save reports a full disk as `RuntimeError: [enforce fail
at inline_container.cc] unexpected pos`).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from spurcore.errors import StorageError

TEMPORARY = re.compile(r"^\..+\.[0-9a-z_]+\.tmp$")
_umask_lock = threading.Lock()


def temporary_path(path: str | Path) -> Path:
    """A fresh temporary sibling of `path`, named so that `is_temporary` knows it."""
    path = Path(path)
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def is_temporary(path: str | Path) -> bool:
    return bool(TEMPORARY.match(Path(path).name))


FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
DENIED = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


def storage_cause(error: BaseException | None) -> OSError | None:
    """The OSError saying a file cannot be written (disk full, quota, read-only, no permission)
    behind `error`: the error itself, or one it was raised from or while handling (torch.save
    raises RuntimeError while handling the OSError of its write); None for any other error."""
    seen = 0
    while error is not None and seen < 16:
        if isinstance(error, OSError) and error.errno in FULL | DENIED:
            return error
        error = error.__cause__ or error.__context__
        seen += 1
    return None


def storage_message(cause: OSError, path: str | Path | None = None) -> str:
    """One sentence: which path cannot be written, why, and what to do."""
    where = path if path is not None else cause.filename or "a file"
    reason = os.strerror(cause.errno) if cause.errno else str(cause)
    if cause.errno in FULL:
        advice = ("the disk is full: free space (or write to another disk) and run the command again; a run keeps "
                  "its finished epochs and continues from the last one with --resume")
    else:
        advice = "it is read-only to this user: make it writable, or write elsewhere (another --out)"
    return f"{where}: cannot write ({reason}): {advice}"


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """A block that writes `path`: an error in it that says the disk is full or the place is
    read-only (`storage_cause`) leaves it as `StorageError` naming `path`; others pass."""
    try:
        yield
    except BaseException as error:
        cause = storage_cause(error)
        if cause is None:
            raise
        raise StorageError(storage_message(cause, path)) from None


def unwritable(folder: str | Path) -> OSError | None:
    """Why no file can be created in `folder` (or, while it does not exist, in the nearest
    folder above it that does): the error saying so (disk full, read-only), else None."""
    folder = Path(folder)
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    probe = temporary_path(folder / "write-probe")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as error:
        if error.errno in FULL | DENIED:
            return error
        raise
    return None


def check_writable(folder: str | Path) -> None:
    """Raise `StorageError` naming `folder` unless a file can be created there (`unwritable`),
    before work that would write there."""
    cause = unwritable(folder)
    if cause is not None:
        raise StorageError(storage_message(cause, folder))


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
    tmp = temporary_path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
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
