"""A persistent, sharded, kill-safe cache of chat replies: key -> {"text", "usage"}.

Layout: `directory/shard-<shard>.jsonl`, one JSON object per line: {"key": ..., "text": ..., "usage": {...}}.
Each process (training rank, worker) appends only to its own shard, so there is no shared database file and no
locking - run directories often live on network filesystems where SQLite and flock are unreliable. On open, all
shards are read into memory, so a restarted job (any number of ranks) sees everything any rank wrote before.

Durability: every entry is written with one `os.write` on an O_APPEND descriptor - no user-space buffer - so
once `put` returns the line is in the kernel and survives a kill -9 of the process. `fsync` (which only matters
for a machine crash or power loss) runs every `fsync_every` entries and on `close`, because fsync on a network
filesystem can take tens of milliseconds and must not run for every reply. A kill mid-write can leave at most
one torn last line; it is skipped with a warning when read, and before appending to its own shard the cache
first ends a torn line, so the next entry never fuses with it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_SHARD_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class ChatCache:
    """Replies keyed by a request hash; `get` before sending, `put` after a reply that parsed.

    Memory: every entry of every shard is held in a dict; a 400k-entry judge run of ~1 KB replies needs about
    a gigabyte. Entries of other shards written after this cache opened are not seen until it is reopened.
    Thread-safe; the in-memory dict updates before the line is written, so `get` sees a `put` at once.
    """

    def __init__(self, directory: str | Path, shard: str = "0", *, fsync_every: int = 256) -> None:
        shard = str(shard)
        if not _SHARD_NAME.match(shard):
            raise ValueError(f"shard must be a plain name (letters, digits, _ . -), got {shard!r}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.shard = shard
        self.path = self.directory / f"shard-{shard}.jsonl"
        self.fsync_every = max(1, int(fsync_every))
        self._entries: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._unsynced = 0
        self._fd: int | None = None
        for path in sorted(self.directory.glob("shard-*.jsonl")):
            self._load(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._end_torn_line()
        log.info("chat cache %s: %d entries loaded, appending to %s", self.directory, len(self), self.path.name)

    def _load(self, path: Path) -> None:
        """Read one shard; lines that do not parse (a torn write) are skipped, never fatal."""
        bad = 0
        with open(path, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                try:
                    row = json.loads(raw)
                    self._entries[row["key"]] = {"text": row["text"], "usage": row.get("usage") or {}}
                except (ValueError, KeyError, TypeError):
                    bad += 1
                    log.warning("chat cache %s: skipping unreadable line %d (torn write?)", path, lineno)
        if bad:
            log.warning("chat cache %s: %d unreadable line(s) skipped", path, bad)

    def _end_torn_line(self) -> None:
        # A kill mid-write leaves our shard without a final newline; appending straight after it would glue the
        # next good entry onto the torn one and lose both.
        size = self.path.stat().st_size
        if size:
            with open(self.path, "rb") as fh:
                fh.seek(size - 1)
                if fh.read(1) != b"\n":
                    assert self._fd is not None
                    os.write(self._fd, b"\n")

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached {"text", "usage"} for key, or None."""
        return self._entries.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: str, text: str, usage: dict[str, Any] | None = None) -> None:
        """Store a reply: one line, one write() call, so a kill leaves either the whole line or a torn tail."""
        usage = dict(usage or {})
        line = json.dumps({"key": key, "text": text, "usage": usage}, ensure_ascii=False) + "\n"
        data = line.encode("utf-8")
        with self._lock:
            if self._fd is None:
                raise RuntimeError(f"chat cache {self.path} is closed")
            self._entries[key] = {"text": text, "usage": usage}
            written = os.write(self._fd, data)
            while written < len(data):  # only a full disk or a signal makes a short write; finish the line
                written += os.write(self._fd, data[written:])
            self._unsynced += 1
            if self._unsynced >= self.fsync_every:
                os.fsync(self._fd)
                self._unsynced = 0

    def flush(self) -> None:
        """fsync the shard now (data written by `put` already survives a process kill without this)."""
        with self._lock:
            if self._fd is not None and self._unsynced:
                os.fsync(self._fd)
                self._unsynced = 0

    def close(self) -> None:
        """fsync and close the shard; later `put` calls raise, `get` keeps working."""
        with self._lock:
            if self._fd is None:
                return
            if self._unsynced:
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "ChatCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: os may already be gone
            pass

    def __repr__(self) -> str:
        return f"ChatCache({str(self.directory)!r}, shard={self.shard!r}, entries={len(self)})"
