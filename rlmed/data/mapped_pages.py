"""Letting go of the pages a process has read from a memory-mapped file.

A memory-mapped Arrow file costs no anonymous memory, but every page a process reads from it stays in that
process's resident set (RSS) until the kernel needs the memory back. A map worker that tokenises its share of a
source's rows reads each page once, so its RSS grew with the share: at 1M dialogues the largest worker held
1.4 GB, half of it pages of rows it had finished with (bench.data --scale). Dropping them (madvise
MADV_DONTNEED) after each batch keeps the worker's RSS flat: the pages stay in the kernel's page cache, and a
later read of the same rows maps them again from there. Linux only; elsewhere nothing is done.

The main process needs it too, though it reads little: opening an Arrow stream file reads the header of every
record batch (one per 1000 rows of a tokenised set), and reading one small column (trained-token counts) touches
every batch again. Each touch maps a block of the page cache around it (64 KB or more on this machine's kernel:
fault-around maps the cached pages near the one read), so those few bytes per row cost about 190 bytes of RSS
per row (47 MB at 250k dialogues), which made the preparing process's RSS grow with the dataset.
:func:`release_dataset_pages` after each such read keeps it flat. RSS is what job schedulers' accounting often
counts against a job's memory (Slurm's jobacct_gather/linux sums its processes' RSS), clean file pages included,
so it is worth keeping down even though the kernel could drop those pages itself.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path
from typing import Any

__all__ = ["release_dataset_pages", "release_mapped_pages"]

MADV_DONTNEED = 4  # linux/mman.h
_libc = None


def _madvise():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _libc.madvise.restype = ctypes.c_int
    return _libc.madvise


def release_mapped_pages(path: str | Path) -> int:
    """Drop this process's resident pages of every mapping of `path`; the number of mappings released.

    Safe for read-only mappings (Arrow's memory-mapped files): their contents are the file's, so the next access
    reads them again; nothing written is lost because nothing was written."""
    if not sys.platform.startswith("linux"):
        return 0
    target = str(Path(path).resolve())
    ranges = []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                fields = line.split(None, 5)
                if len(fields) == 6 and fields[5].rstrip("\n") == target and "w" not in fields[1]:
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    ranges.append((start, end))
    except OSError:
        return 0
    madvise = _madvise()
    for start, end in ranges:
        madvise(start, end - start, MADV_DONTNEED)
    return len(ranges)


def release_dataset_pages(dataset: Any) -> int:
    """:func:`release_mapped_pages` for every file a `datasets.Dataset` is memory-mapped from (none for an
    in-memory one); the number of mappings released."""
    return sum(release_mapped_pages(f["filename"]) for f in getattr(dataset, "cache_files", None) or [])
