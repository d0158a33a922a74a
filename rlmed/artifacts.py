"""What a stage leaves on disk, and how rlmed knows it is complete.

run_dir/<stage id>/ holds the stage's outputs, `metrics.jsonl` (every logged step) and `manifest.json`.
The manifest is written last and atomically (temp file + rename), so its presence means the stage finished:
a crash at any earlier point leaves no manifest, and the stage is never taken as done.

Content hashes of user files are cached by (size, mtime) in run_dir/.rlmed/hash_cache.json, so a 15 GB model
folder is hashed once, not on every launch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STARTED = "started.json"
RUNNING = "running.json"  # while a stage runs: who runs it (host, pid), so `rlmed status` can tell live from dead
FAILED = "failed.json"  # after a stage failed: the error, until the stage runs again
METRICS = "metrics.jsonl"
TRACKED_PACKAGES = (
    "rlmed", "torch", "transformers", "trl", "peft", "deepspeed", "accelerate", "datasets", "tokenizers",
    "safetensors", "openai", "wandb",
)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


# mkstemp creates files readable by their owner only. Manifests, reports and plots on a shared run_dir are read
# by other users and nodes, so by default they get the ordinary mode the umask allows. Files holding patient text
# (candidates, scored answers, pairs, generations) are written with private=True and keep 0600 (their new folders
# 0700); and by default a file never opens wider than its folder: in a folder closed to others (a 0700 run
# folder) it stays 0600, so closing the run folder is enough to keep everything written into it private.
FILE_MODE = 0o666 & ~_umask()
PRIVATE_FILE_MODE, PRIVATE_DIR_MODE = 0o600, 0o700


def atomic_write_text(path: Path, text: str, *, private: bool | None = None) -> None:
    """Write `text` so that readers see either the old file or the whole new one, never a part.
    private: see atomic_write_bytes."""
    atomic_write_bytes(path, text.encode("utf-8"), private=private)


def atomic_write_bytes(path: Path, data: bytes, *, private: bool | None = None) -> None:
    """Write `data` so that readers see either the old file or the whole new one, never a part.

    private True: the file is 0600 and folders created for it 0700 (patient text). False: the umask's mode
    (FILE_MODE). None: FILE_MODE, unless the folder is closed to group and others, then 0600.
    """
    path = Path(path)
    if private:
        _make_private_dirs(path.parent)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    folder_closed = private is None and os.stat(path.parent).st_mode & 0o077 == 0
    mode = PRIVATE_FILE_MODE if private or folder_closed else FILE_MODE
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode != PRIVATE_FILE_MODE:  # mkstemp's own mode is 0600: widen only when asked to
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _make_private_dirs(folder: Path) -> None:
    """Create `folder` and its missing parents 0700 (mkdir(parents=True) gives the parents the umask's mode)."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for created in reversed(missing):
        created.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)


def atomic_write_json(path: Path, obj: Any, *, private: bool | None = None) -> None:
    text = json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write_text(path, text, private=private)


def atomic_write_jsonl(path: Path, rows: Any, *, private: bool | None = None) -> None:
    """Rows as a JSON-lines file, written whole and renamed into place (never half a file). Rows of patient text
    (candidates, scored answers, pairs, generations) are written with private=True (0600)."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), private=private)


def read_jsonl(path: Path) -> list[Any]:
    """The rows of a JSON-lines file that rlmed wrote (blank lines skipped)."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def stable_hash(obj: Any) -> str:
    """sha256 of a JSON-able object in canonical form (sorted keys), for config hashes."""
    text = json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_manifest(stage_dir: Path) -> dict[str, Any] | None:
    """The stage's manifest, or None when it is absent or unreadable (an unreadable one is not 'done')."""
    path = Path(stage_dir) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable manifest %s (%s); the stage will run again", path, exc)
        return None


def manifest_hash(stage_dir: Path) -> str | None:
    """Hash of the manifest file's bytes: what a dependant records for a `$stage.output` input.

    Every run writes a new start time into the manifest, so a stage that re-ran always has a new hash and
    its dependants re-run too.
    """
    path = Path(stage_dir) / MANIFEST
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


class HashCache:
    """Content hashes of files and folders, cached by path, size and modification time."""

    def __init__(self, cache_file: Path):
        self.cache_file = Path(cache_file)
        self._entries: dict[str, dict[str, Any]] = {}
        self._dirty = False
        try:
            self._entries = json.loads(self.cache_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self._entries = {}

    def file_hash(self, path: Path) -> str:
        path = Path(path).resolve()
        stat = path.stat()
        key = str(path)
        entry = self._entries.get(key)
        if entry and entry["size"] == stat.st_size and entry["mtime_ns"] == stat.st_mtime_ns:
            return entry["sha256"]
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        self._entries[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest.hexdigest()}
        self._dirty = True
        return digest.hexdigest()

    def path_hash(self, path: Path) -> str:
        """A file's content hash, or a folder's: the hash of its files' relative names and content hashes."""
        path = Path(path)
        if path.is_file():
            return self.file_hash(path)
        digest = hashlib.sha256()
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{child.relative_to(path).as_posix()}\0{self.file_hash(child)}\n".encode())
        return digest.hexdigest()

    def save(self) -> None:
        if self._dirty:
            atomic_write_json(self.cache_file, self._entries)
            self._dirty = False


class MetricsLog:
    """metrics.jsonl of one stage: one JSON object per logged step, appended and flushed as it happens."""

    def __init__(self, path: Path):
        self.path = Path(path)
        # Also called with every record (e.g. W&B), so what is logged anywhere is in metrics.jsonl too.
        self.sinks: list[Any] = []
        self.table_sinks: list[Any] = []  # called with (name, rows, step) for every table logged

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        record = {k: _jsonable(v) for k, v in metrics.items()}
        if step is not None:
            record = {"step": step, **record}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        for sink in self.sinks:
            sink({k: v for k, v in record.items() if k != "step"}, step)

    def log_table(self, name: str, rows: list[dict[str, Any]], step: int | None = None) -> None:
        """Append rows (e.g. sampled answers) to tables/<name>.jsonl beside metrics.jsonl, each with its step."""
        path = self.tables_dir / f"{name}.jsonl"
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Tables hold sampled prompts and answers (patient text): owner-only, like the other patient-text files.
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE_MODE), "a",
                       encoding="utf-8") as handle:
            for row in rows:
                record = {"step": step, **{k: _jsonable(v) for k, v in row.items()}}
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        for sink in self.table_sinks:
            sink(name, rows, step)

    @property
    def tables_dir(self) -> Path:
        return self.path.parent / "tables"

    def read(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path) if self.path.exists() else []

    def truncate_after(self, step: int) -> None:
        """Drop records (and table rows) logged after `step`: a resumed run logs those steps again."""
        files = [self.path] + (sorted(self.tables_dir.glob("*.jsonl")) if self.tables_dir.is_dir() else [])
        for path in files:
            if path.exists():
                kept = [r for r in read_jsonl(path) if r.get("step") is None or r["step"] <= step]
                atomic_write_jsonl(path, kept, private=path != self.path)  # tables: patient text


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible instead of failing the log
    return value


def package_versions() -> dict[str, str]:
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_revision(path: Path) -> dict[str, Any] | None:
    """HEAD commit and dirty flag of the git checkout containing `path`, or None outside one."""
    where = Path(path).resolve()
    where = where if where.is_dir() else where.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        )
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return None


def last_complete_checkpoint(root: Path) -> Path | None:
    """The newest `checkpoint-N` folder under `root` that holds a complete trainer state (trainer_state.json is
    written last by the Trainer's save), or None."""
    root = Path(root)
    if not root.is_dir():
        return None
    found = []
    for path in root.iterdir():
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and (path / "trainer_state.json").exists():
            found.append((int(match.group(1)), path))
    return max(found)[1] if found else None
