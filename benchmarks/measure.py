"""What a command costs: its wall time and CPU time, the peak memory of its whole process tree
(data-loader workers and trial processes included), and the disk it leaves behind.

Memory is sampled from /proc every `interval` seconds over the command's process and all its
descendants. `peak_rss_mib` is their resident memory with every page counted once: the sum of
their proportional set sizes (`Pss`: a page shared by k processes, such as the libraries a
data-loader worker inherits, counts 1/k in each). A peak shorter than the interval can fall
between two samples (reading a large process's page tables takes milliseconds, so sampling much
more often than twice a second loads the machine it measures); `ru_maxrss` cannot stand in,
since a forked child starts with its parent's high-water mark. `peak_rss_sum_mib` adds their resident set sizes as they are (`VmRSS`: shared pages
counted in every process, an upper bound), and `peak_anon_mib` the anonymous part of the
proportional sizes (`Pss_Anon`: what the processes hold themselves, leaving out file pages such
as a memory-mapped image or feature cache, which the kernel can drop at will). Linux only.

Imported by the scripts beside it (`python benchmarks/x.py` puts this folder on the path).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import attrs

MIB = 2**20


@attrs.frozen
class Cost:
    seconds: float
    cpu_seconds: float    # user + system time of the command and the descendants it waited for
    peak_rss_mib: float
    peak_rss_sum_mib: float
    peak_anon_mib: float
    disk_mib: float       # growth of the watched folders
    returncode: int


def descendants(root: int) -> list[int]:
    """`root` and every process below it, from the parent pids in /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])  # the name may hold spaces and parentheses
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def memory_kib(pid: int) -> tuple[int, int, int]:
    """(Rss, Pss, Pss_Anon) of one process in KiB, zeros once it has gone."""
    fields = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key in ("Rss", "Pss", "Pss_Anon"):
                    fields[key] = int(rest.split()[0])
    except (OSError, ValueError):
        return 0, 0, 0
    return fields.get("Rss", 0), fields.get("Pss", 0), fields.get("Pss_Anon", fields.get("Pss", 0))


def folder_bytes(paths: Sequence[Path]) -> int:
    """The summed size of every file under `paths` (missing paths count 0)."""
    total = 0
    for path in paths:
        path = Path(path)
        if path.is_file():
            total += path.stat().st_size
            continue
        for folder, _, files in os.walk(path):
            for name in files:
                try:
                    total += os.lstat(os.path.join(folder, name)).st_size
                except OSError:
                    pass
    return total


def measure(command: Sequence[str], *, watch: Sequence[Path] = (), log: Path | None = None,
            env: dict[str, str] | None = None, interval: float = 0.5) -> Cost:
    """Run `command` (its output to `log`), sampling the memory of its process tree."""
    before = folder_bytes(watch)
    handle = open(log, "wb") if log else subprocess.DEVNULL
    start = time.perf_counter()
    try:
        process = subprocess.Popen(list(command), stdout=handle, stderr=subprocess.STDOUT, env=env)
        peak_rss = peak_pss = peak_anon = 0
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            rss = pss = anon = 0
            for member in descendants(process.pid):
                r, p, a = memory_kib(member)
                rss, pss, anon = rss + r, pss + p, anon + a
            peak_rss, peak_pss, peak_anon = max(peak_rss, rss), max(peak_pss, pss), max(peak_anon, anon)
            time.sleep(interval)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if log:
            handle.close()
    return Cost(seconds=round(seconds, 2), cpu_seconds=round(usage.ru_utime + usage.ru_stime, 1), peak_rss_mib=round(peak_pss / 1024, 1), peak_rss_sum_mib=round(peak_rss / 1024, 1), peak_anon_mib=round(peak_anon / 1024, 1),
                disk_mib=round((folder_bytes(watch) - before) / MIB, 1), returncode=process.returncode)
