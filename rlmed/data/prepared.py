"""Data prepared once on Arrow and memory-mapped by every rank, so memory does not grow with the dataset.

A stage's sources are read as streams (rlmed.data.records.iter_records), converted row by row and written to
Arrow files in a cache folder, one per source; mixing selects rows of them by index (rlmed.data.mixing.plan_mix,
so the order is the in-memory path's), and tokenisation is a `datasets` map with worker processes whose output
is cached the same way. Every rank then memory-maps the same files: the pages are the OS's, shared, and
dropped under pressure, where Python lists were copied into every rank.

Each cache entry is named by a hash of what it is made from: the input's content hash, the source's settings
(columns, format, on_bad_rows), the converter, and for tokenised data the tokenizer and its settings. So a
re-run or resumed stage, or another rank, reuses it, and a changed file or setting makes a new one. An entry is
built in a private temporary folder and published by renaming it into place, with its record written last: a
crash leaves no entry, and two nodes sharing a filesystem can both build one, the first rename wins and the
other is discarded. A file lock makes the ranks of a node wait for the one building it instead of repeating
the work. `events.jsonl` in the cache folder says which process built each entry and which reused it.

The cache holds patient text, so it lives in the run folder (`<run_dir>/.rlmed/data`, closed to other users)
unless RLMED_DATA_CACHE names another place (e.g. a node-local disk); deleting it only costs a re-preparation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from rlmed.artifacts import HashCache, atomic_write_json, stable_hash

logger = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["ArrowItems", "Codec", "DataCache", "cached_map", "default_num_proc"]

# Bump when the layout of entries or the meaning of a converter changes: old entries are then never read.
CACHE_VERSION = 1
RECORD = "record.json"
EVENTS = "events.jsonl"
WRITE_BATCH = 1000  # rows per Arrow record batch written (and per batch of a map)
# A prepared source's rows (JSON text) are written in larger record batches: up to this many rows, or about
# this many characters (8-32 MB of UTF-8), whichever comes first.
ITEM_BATCH_ROWS = 50_000
ITEM_BATCH_CHARS = 8 << 20
# Below this many rows a map runs in this process: starting workers costs more than it saves.
MIN_ROWS_PER_WORKER = 5000


def _as_is(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Codec(Generic[T]):
    """A converter (record -> item) with the JSON form its items take in the cache (by default the item itself,
    for items that are JSON already). `name` goes into cache keys: it must change whenever `convert` would give
    different items for the same rows."""

    name: str
    convert: Callable[[Any, str | None], T]
    encode: Callable[[T], Any] = _as_is
    decode: Callable[[Any], T] = _as_is

    def __call__(self, record: Any, fmt: str | None) -> T:
        return self.convert(record, fmt)


def default_num_proc(rows: int) -> int:
    """Worker processes for a map over `rows` rows: RLMED_DATA_NUM_PROC, else the CPUs this process may use,
    at most one per MIN_ROWS_PER_WORKER rows."""
    configured = os.environ.get("RLMED_DATA_NUM_PROC")
    if configured:
        try:
            return max(1, int(configured))
        except ValueError:
            raise ValueError(f"RLMED_DATA_NUM_PROC must be a whole number of processes, got {configured!r}") from None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, rows // MIN_ROWS_PER_WORKER))


class DataCache:
    """A folder of prepared-data entries (see the module docstring)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.hashes = HashCache(self.root / "hash_cache.json")

    @classmethod
    def for_run(cls, run_dir: Path) -> "DataCache":
        configured = os.environ.get("RLMED_DATA_CACHE")
        return cls(Path(configured) if configured else Path(run_dir) / ".rlmed" / "data")

    def content_hash(self, path: str) -> str:
        found = self.hashes.path_hash(Path(path))
        self.hashes.save()
        return found

    def _name(self, kind: str, parts: dict[str, Any]) -> str:
        return f"{kind}-{stable_hash({'version': CACHE_VERSION, **parts})[:32]}"

    def find(self, kind: str, parts: dict[str, Any]) -> dict[str, Any] | None:
        """The record of the published entry made from `parts`, or None; builds nothing."""
        return self._read_record(self.root / self._name(kind, parts))

    def entry(self, kind: str, parts: dict[str, Any], build: Callable[[Path], dict[str, Any]]) -> tuple[Path, dict]:
        """The published folder of the entry made from `parts`, built by `build(folder)` (which writes its files
        there and returns what the record should say) when no process has built it yet; and its record."""
        from filelock import FileLock

        name = self._name(kind, parts)
        final = self.root / name
        found = self._read_record(final)
        if found is None:
            (self.root / "locks").mkdir(mode=0o700, exist_ok=True)
            with FileLock(str(self.root / "locks" / f"{name}.lock")):
                found = self._read_record(final)  # built by another rank while this one waited
                if found is None:
                    return final, self._build(name, final, parts, build)
        self._event(name, "reused")
        return final, found

    def _build(self, name: str, final: Path, parts: dict[str, Any], build: Callable[[Path], dict]) -> dict:
        from rlmed import dist

        logger.info("preparing %s data (%s)", name.split("-")[0], _describe(parts))
        work = self.root / f".{name}.{socket.gethostname()}.{os.getpid()}.tmp"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(mode=0o700)
        started = time.monotonic()
        try:
            record = dict(build(work))
            record.update(entry=name, parts=parts, seconds=round(time.monotonic() - started, 3),
                          built_by={"host": socket.gethostname(), "pid": os.getpid(), "rank": dist.rank(),
                                    "local_rank": dist.local_rank()})
            atomic_write_json(work / RECORD, record, private=True)  # last: its presence marks a whole entry
            try:
                os.rename(work, final)
            except OSError:  # published meanwhile by a process this lock does not reach (another node)
                existing = self._read_record(final)
                if existing is None:
                    raise
                shutil.rmtree(work, ignore_errors=True)
                self._event(name, "reused")
                return existing
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        self._event(name, "prepared", seconds=record["seconds"])
        logger.info("prepared %s data in %.1fs%s", name.split("-")[0], record["seconds"],
                    f": {record['rows']} rows" if "rows" in record else "")
        return record

    @staticmethod
    def _read_record(folder: Path) -> dict | None:
        try:
            return json.loads((folder / RECORD).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def _event(self, name: str, action: str, **extra: Any) -> None:
        """One line per use of an entry, appended in one write (O_APPEND keeps concurrent lines whole)."""
        from rlmed import dist

        line = json.dumps({"entry": name, "action": action, "rank": dist.rank(), "local_rank": dist.local_rank(),
                           "host": socket.gethostname(), "pid": os.getpid(), "time": time.time(), **extra})
        fd = os.open(self.root / EVENTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (line + "\n").encode("utf-8"))
        finally:
            os.close(fd)

    def events(self) -> list[dict[str, Any]]:
        path = self.root / EVENTS
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _describe(parts: dict[str, Any]) -> str:
    """A short, human description of what an entry is made from (for the log)."""
    if "path" in parts:
        return f"{Path(str(parts['path'])).name}, {parts.get('converter')}"
    if "block_size" in parts:
        return f"blocks of {parts['block_size']} tokens"
    return str(parts.get("columns", "derived"))


def write_column(path: Path, name: str, arrow_type: Any, values: Iterator[Any], max_rows: int = WRITE_BATCH,
                 max_chars: int | None = None) -> int:
    """Write `values` as the one column `name` of an Arrow stream file, a record batch at a time (so memory
    does not grow with the file): at most `max_rows` values a batch, and for text at most about `max_chars`
    characters; the row count."""
    import pyarrow as pa

    schema = pa.schema([(name, arrow_type)])
    count = chars = 0
    batch: list[Any] = []
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for value in values:
            batch.append(value)
            if max_chars is not None:
                chars += len(value)
            if len(batch) >= max_rows or (max_chars is not None and chars >= max_chars):
                writer.write_batch(pa.record_batch([pa.array(batch, arrow_type)], schema=schema))
                count += len(batch)
                batch, chars = [], 0
        if batch:
            writer.write_batch(pa.record_batch([pa.array(batch, arrow_type)], schema=schema))
            count += len(batch)
    return count


def write_items(path: Path, items: Iterator[Any], encode: Callable[[Any], Any]) -> int:
    """Write items as one JSON text column `item` of an Arrow stream file; the row count. Record batches are as
    large as ITEM_BATCH_CHARS allows: every process that opens the file reads each batch's header, and each such
    read maps a block of pages into its RSS (rlmed.data.mapped_pages), so fewer batches cost less per row."""
    import pyarrow as pa

    return write_column(path, "item", pa.large_string(),
                        (json.dumps(encode(item), ensure_ascii=False) for item in items),
                        max_rows=ITEM_BATCH_ROWS, max_chars=ITEM_BATCH_CHARS)


def open_files(folder: Path, names: Sequence[str]) -> Any:
    """The memory-mapped Dataset of an entry's Arrow files, in order. Opening a file reads every record batch's
    header; those pages are let go at once (rlmed.data.mapped_pages), so opening costs no RSS per row."""
    from datasets import Dataset, concatenate_datasets

    from rlmed.data.mapped_pages import release_mapped_pages

    parts = []
    for name in names:
        parts.append(Dataset.from_file(str(folder / name)))
        release_mapped_pages(folder / name)
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


class ArrowItems(Sequence, Generic[T]):
    """A read-only sequence of items held in the `item` column (JSON, decoded on access) of prepared sources'
    Arrow files, in a mix's order, so stage code written for lists keeps working.

    `parts` are the sources' entries (folder name, row count) in the cache `root`, laid end to end; `indices`
    the rows taken, in order, as positions in that concatenation. Keeping them apart (rather than one selected
    Dataset) lets :func:`cached_map` work on each source in file order: every worker reads its own contiguous
    share, and the result is cached per source, whatever the mix, seed or split. `key` names the content."""

    def __init__(self, root: Path, parts: Sequence[tuple[str, int]], indices: Any, decode: Callable[[Any], T],
                 key: str):
        import numpy as np

        self.root = Path(root)
        self.parts = list(parts)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.offsets = np.cumsum([0] + [n for _, n in self.parts])[:-1]
        self.decode = decode
        self.key = key
        self._dataset: Any = None

    @property
    def dataset(self) -> Any:
        """The items as one Dataset (`item` column) in this sequence's order: the sources' files, selected."""
        if self._dataset is None:
            base = open_files(self.root, [f"{name}/rows.arrow" for name, _ in self.parts])
            self._dataset = base.select(self.indices)
        return self._dataset

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            rows = range(len(self))[index]
            return ArrowItems(self.root, self.parts, self.indices[index], self.decode,
                              stable_hash([self.key, rows.start, rows.stop, rows.step]))
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.decode(json.loads(self.dataset[index]["item"]))

    def __iter__(self) -> Iterator[T]:
        for batch in self.dataset.iter(batch_size=WRITE_BATCH):
            for text in batch["item"]:
                yield self.decode(json.loads(text))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and len(self) == len(other) and all(a == b for a, b in zip(self, other))


def cached_map(cache: DataCache, kind: str, items: ArrowItems, function: Callable[[list[Any]], dict[str, list]],
               parts: dict[str, Any], features: Any, desc: str) -> Any:
    """`function` (decoded items of a batch -> columns) over `items`: a memory-mapped Dataset with the columns
    `features` declares (None: inferred), in `items`' order.

    Each source is mapped on its own, in file order, over the rows the items take from it (all of them, in the
    usual mix), by `datasets.map` with worker processes, and cached as an entry keyed by that source's entry,
    the rows and `parts` (the function's settings, e.g. the tokenizer's hash); the mix's order is then a
    selection of the results. A new seed, split or mix of the same sources reuses the mapped rows."""
    import numpy as np
    from datasets import Dataset, concatenate_datasets

    from rlmed.data.mapped_pages import release_dataset_pages

    mapped_parts = []
    positions = np.empty(len(items.indices), dtype=np.int64)
    done = 0
    for (name, n_rows), offset in zip(items.parts, items.offsets):
        mapped, done = _map_source(cache, kind, items, name, n_rows, offset, function, parts, features, desc,
                                   positions, done)
        if mapped is not None:
            mapped_parts.append(mapped)
    if not mapped_parts:
        return Dataset.from_dict({})
    whole = mapped_parts[0] if len(mapped_parts) == 1 else concatenate_datasets(mapped_parts)
    selected = whole.select(positions)
    release_dataset_pages(selected)
    return selected


def _map_source(cache: DataCache, kind: str, items: ArrowItems, name: str, n_rows: int, offset: int,
                function: Callable[[list[Any]], dict[str, list]], parts: dict[str, Any], features: Any, desc: str,
                positions: Any, done: int) -> tuple[Any, int]:
    """One source's share of :func:`cached_map`: its mapped Dataset (None when the items take none of its rows),
    with `positions` filled in where the items take its rows, and the running row count. A function of its own
    so that the per-source index arrays (8 bytes a row each) are gone before the next source's are made."""
    import numpy as np

    from rlmed.data.mapped_pages import release_mapped_pages

    if len(items.parts) == 1:  # the usual case: every index is this source's row, no copy needed
        inside, local = slice(None), items.indices
    else:
        inside = (items.indices >= offset) & (items.indices < offset + n_rows)
        local = items.indices[inside] - offset
    taken = np.zeros(n_rows, dtype=bool)  # 1 byte a source row, where sorting the indices took 3 x 8
    taken[local] = True
    rows = np.flatnonzero(taken)  # sorted: file order
    del taken
    if not len(rows):
        return None, done
    whole = {"rows": name, "subset": "all", **parts}
    rows_file = cache.root / name / "rows.arrow"
    source = open_files(cache.root / name, ["rows.arrow"])
    # Map the whole source when the items take most of it, or when that is done already (a validation split
    # after its training split): one pass per source serves every split and seed. A small sample of a large
    # source maps only its own rows.
    if 2 * len(rows) >= n_rows or cache.find(kind, whole) is not None:
        del rows
        mapped = _map_entry(cache, kind, source, items.decode, function, whole, features, desc, rows_file)
        if isinstance(inside, slice):
            np.add(local, done, out=positions)
        else:
            positions[inside] = done + local
        done += n_rows
    else:
        subset = {**whole, "subset": hashlib.sha256(rows.tobytes()).hexdigest()}
        mapped = _map_entry(cache, kind, source.select(rows), items.decode, function, subset, features, desc,
                            rows_file)
        positions[inside] = done + np.searchsorted(rows, local)
        done += len(rows)
    # The map's own reading of the source in this process (datasets opens its shards' results here too).
    release_mapped_pages(rows_file)
    return mapped, done


def _map_entry(cache: DataCache, kind: str, source: Any, decode: Callable[[Any], Any],
               function: Callable[[list[Any]], dict[str, list]], parts: dict[str, Any], features: Any,
               desc: str, rows_file: Path) -> Any:
    """One source's rows mapped by `function` into a cache entry (built once), memory-mapped. Each worker lets
    go of the source's pages after every batch (rlmed.data.mapped_pages), so its memory does not grow with its
    share of the rows."""
    from rlmed.data.mapped_pages import release_mapped_pages

    n = len(source)

    def build(folder: Path) -> dict[str, Any]:
        def batch(rows: dict[str, list]) -> dict[str, list]:
            items = [decode(json.loads(text)) for text in rows["item"]]
            del rows
            release_mapped_pages(rows_file)
            return function(items)

        num_proc = default_num_proc(n)
        mapped = source.map(batch, batched=True, batch_size=WRITE_BATCH, remove_columns=["item"],
                            features=features, num_proc=num_proc if num_proc > 1 else None,
                            cache_file_name=str(folder / "data.arrow"), load_from_cache_file=False,
                            new_fingerprint=stable_hash(parts)[:32], desc=desc)
        return {"files": [Path(f["filename"]).name for f in mapped.cache_files], "rows": len(mapped),
                "num_proc": num_proc}

    folder, record = cache.entry(kind, parts, build)
    return open_files(folder, record["files"])
