"""The lock a run holds on its folder while it writes there, so two runs (or a run and a
`--resume` of it) can never train into the same folder.

The lock is an advisory `flock` on `<run>/.lock`, which also records the holder's pid, host
and start time for the message a second run gets. The operating system releases the lock when
the holder dies, however it dies (`kill -9` included), so a stale lock is taken over by the
next run without any guessing about pids; the file itself stays, and is rewritten by each
holder.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from spurcore.errors import SpurcoreError

LOCK_FILE = ".lock"


class RunLockedError(SpurcoreError):
    """Another process holds the run folder."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')} (since {started})"


@contextlib.contextmanager
def locked(folder: str | Path) -> Iterator[None]:
    """Hold the lock of `folder` (created if needed) for the block; raise `RunLockedError`
    naming the holder when a live process holds it."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(
                f"{folder} is in use by {_holder(path)}: a run is writing there. Wait for it to finish, "
                f"or stop it, then run again (--resume continues it)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}).encode())
        os.fsync(fd)
        yield
    finally:
        # unlocked explicitly: a process forked meanwhile (a data-loader worker) shares the
        # descriptor, and closing ours alone would leave the lock held until it exits
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
