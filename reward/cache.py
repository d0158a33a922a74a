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

Trust: replies quote the dialogues they judge, so the folder is kept 0700 and shards 0600, and a folder or shard
that is a symbolic link (or not a plain folder/file) is refused with UnsafeCacheError: a link could send our
appends into someone else's file or feed us theirs. Every row is checked when read; one that is not usable (text
not a string, usage not a dict of counts, ...) is skipped and counted, so its key is a miss and never an
exception in the middle of a scoring run. With $RLMED_CACHE_KEY set, each line carries an HMAC-SHA256 of its
key, text and usage; a line whose HMAC is missing or wrong is skipped and counted as tampered, so a verdict
planted in a shard by someone without the key is never served.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import stat
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_SHARD_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_SHARD_FILE = re.compile(r"^shard-[A-Za-z0-9_.-]+\.jsonl$")
KEY_ENV = "RLMED_CACHE_KEY"
DIR_MODE, FILE_MODE = 0o700, 0o600


class UnsafeCacheError(RuntimeError):
    """The cache folder or a shard is a symbolic link, not a plain folder/file, or open to other users in a way
    this process cannot close."""


@dataclass
class CacheStats:
    """What opening the cache read: rows loaded, and rows skipped (each a miss) because they were unreadable (a
    torn write), invalid (wrong shape or types) or tampered (HMAC missing or wrong while $RLMED_CACHE_KEY is set)."""

    loaded: int = 0
    unreadable: int = 0
    invalid: int = 0
    tampered: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


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
        self.shard = shard
        self.path = self.directory / f"shard-{shard}.jsonl"
        self.fsync_every = max(1, int(fsync_every))
        self.stats = CacheStats()
        secret = os.environ.get(KEY_ENV, "")
        self._secret = secret.encode("utf-8") if secret else None
        self._entries: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._unsynced = 0
        self._fd: int | None = None
        # Every shard is opened relative to one descriptor of the checked folder, never by path again, so the
        # folder cannot be swapped for a link between the check and the opens.
        dir_fd = _open_private_dir(self.directory)
        try:
            for name in sorted(n for n in os.listdir(dir_fd) if _SHARD_FILE.match(n)):
                self._load(dir_fd, name)
            self._fd = _open_shard(dir_fd, self.path.name, self.directory,
                                   os.O_RDWR | os.O_APPEND | os.O_CREAT)
        finally:
            os.close(dir_fd)
        self._end_torn_line()
        skipped = self.stats.unreadable + self.stats.invalid + self.stats.tampered
        log.info("chat cache %s: %d entries loaded (%d lines skipped), appending to %s", self.directory, len(self),
                 skipped, self.path.name)

    def _load(self, dir_fd: int, name: str) -> None:
        """Read one shard; a line that does not parse (a torn write), has the wrong shape, or fails its HMAC is
        skipped and counted, never fatal."""
        fd = _open_shard(dir_fd, name, self.directory, os.O_RDONLY | os.O_NONBLOCK)
        path = self.directory / name
        counts = {"unreadable": 0, "invalid": 0, "tampered": 0}
        with os.fdopen(fd, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                try:
                    row = json.loads(raw)
                except ValueError:
                    counts["unreadable"] += 1
                    log.warning("chat cache %s: skipping unreadable line %d (torn write?)", path, lineno)
                    continue
                problem = _row_problem(row)
                if problem:
                    counts["invalid"] += 1
                    log.warning("chat cache %s: skipping line %d: %s", path, lineno, problem)
                    continue
                if self._secret is not None and not _mac_ok(self._secret, row):
                    counts["tampered"] += 1
                    log.warning("chat cache %s: skipping line %d: its HMAC does not match $%s", path, lineno, KEY_ENV)
                    continue
                self._entries[row["key"]] = {"text": row["text"], "usage": dict(row.get("usage", {}))}
                self.stats.loaded += 1
        for what, n in counts.items():
            setattr(self.stats, what, getattr(self.stats, what) + n)
        if any(counts.values()):
            log.warning("chat cache %s: skipped %s", path, ", ".join(f"{n} {w}" for w, n in counts.items() if n))

    def _end_torn_line(self) -> None:
        # A kill mid-write leaves our shard without a final newline; appending straight after it would glue the
        # next good entry onto the torn one and lose both.
        assert self._fd is not None
        size = os.fstat(self._fd).st_size
        if size and os.pread(self._fd, 1, size - 1) != b"\n":
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
        row: dict[str, Any] = {"key": key, "text": text, "usage": usage}
        problem = _row_problem(row)
        if problem:  # what would be skipped on reading must not be written
            raise TypeError(f"chat cache: refusing to store a row whose {problem}")
        if self._secret is not None:
            row["mac"] = _mac(self._secret, row)
        data = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
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


def _row_problem(row: Any) -> str | None:
    """Why a row cannot be served (None when it can): the client hands text to a parser and sums usage counts,
    so anything else would raise in the middle of scoring."""
    if not isinstance(row, dict):
        return f"row is a {type(row).__name__}, not an object"
    if not isinstance(row.get("key"), str) or not row["key"]:
        return "key is not a non-empty string"
    if not isinstance(row.get("text"), str):
        return f"text is {type(row.get('text')).__name__}, not a string"
    usage = row.get("usage", {})
    if not isinstance(usage, dict):
        return f"usage is {type(usage).__name__}, not an object"
    for name, value in usage.items():
        if not isinstance(name, str) or isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"usage {name!r} is {value!r}, not a token count"
    return None


def _mac(secret: bytes, row: dict[str, Any]) -> str:
    # Over the parsed values in canonical form, so the MAC does not depend on how the line was spelled.
    payload = json.dumps([row["key"], row["text"], row.get("usage", {})], ensure_ascii=False, sort_keys=True,
                         separators=(",", ":"))
    return hmac.new(secret, payload.encode("utf-8"), hashlib.sha256).hexdigest()


def _mac_ok(secret: bytes, row: dict[str, Any]) -> bool:
    given = row.get("mac")
    return isinstance(given, str) and hmac.compare_digest(given, _mac(secret, row))


def _open_private_dir(directory: Path) -> int:
    """A descriptor of `directory`, created 0700 if missing and narrowed to 0700 if it is ours and wider; a
    symbolic link or a non-folder raises UnsafeCacheError. (Links among its parents are the user's layout and
    are followed.)"""
    try:
        directory.mkdir(mode=DIR_MODE, parents=True)  # the mode applies to the last component only
    except FileExistsError:
        pass
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        kind = "a symbolic link" if directory.is_symlink() else "not a folder"
        raise UnsafeCacheError(f"chat cache folder {directory} is {kind} ({exc.strerror}); refusing it: give "
                               f"cache_dir a real folder of its own") from None
    try:
        _make_private(fd, DIR_MODE, f"chat cache folder {directory}")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_shard(dir_fd: int, name: str, directory: Path, flags: int) -> int:
    """Open a shard inside the checked folder without following a link; it must be a regular file, and is
    narrowed to 0600 when it is ours and wider."""
    path = directory / name
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE, dir_fd=dir_fd)
    except OSError as exc:
        if os.path.islink(path):
            raise UnsafeCacheError(f"chat cache shard {path} is a symbolic link; refusing it (remove the link; a "
                                   f"shard must be a plain file written by the cache)") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafeCacheError(f"chat cache shard {path} is not a regular file; refusing it")
        _make_private(fd, FILE_MODE, f"chat cache shard {path}")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _make_private(fd: int, mode: int, what: str) -> None:
    st = os.fstat(fd)
    if st.st_mode & 0o077 == 0:
        return
    try:
        os.fchmod(fd, mode)
    except PermissionError:
        raise UnsafeCacheError(f"{what} is open to other users (mode {stat.S_IMODE(st.st_mode):o}) and is not "
                               f"ours to narrow; chmod it to {mode:o} or choose another cache_dir") from None
    log.info("%s was mode %o; narrowed to %o", what, stat.S_IMODE(st.st_mode), mode)
