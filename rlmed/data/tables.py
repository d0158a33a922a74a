"""Reading tabular data: Parquet files, CSV/TSV files and folders written by ``datasets``' ``save_to_disk``.

Many medical datasets ship as Parquet (the Hub's own format) or as spreadsheets exported to CSV, so rlmed
reads them into the same located rows as JSON Lines (see rlmed.data.records): every row remembers where it
came from, so an error can send the user straight to it.

Where a row "is" differs by kind, and is chosen so the user can find it with their own tools:
- Parquet and saved datasets: row ``i`` (0-based) is line ``i + 1``;
- CSV/TSV: the physical line the row starts on, the header being line 1 (so the first data row is line 2 and
  a cell holding a line break moves every later row down).

Nulls, and empty CSV cells, are left out of a row: Arrow fills every column of every row, so a row of a
mixed file (text rows next to alpaca rows) would otherwise carry ``"instruction": None`` and be taken for the
wrong format. A CSV cell holding a JSON array or object (as ``json.dumps`` writes it) is read as that list
or object, so dialogue columns such as ``messages`` survive a round trip through CSV.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any, Iterator

from rlmed.data.records import DataError, Record, Row

logger = logging.getLogger(__name__)

__all__ = ["is_saved_dataset", "iter_parquet", "iter_saved_dataset", "read_parquet", "read_delimited",
           "read_saved_dataset", "without_nulls"]


def without_nulls(value: Any) -> Any:
    """Drop null fields of objects, at any depth; list items are kept as they are (their place matters)."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


# Rows converted to Python objects at a time when streaming an Arrow-backed file.
BATCH_ROWS = 4096


def read_parquet(name: str) -> list[Row]:
    """Rows of a Parquet file; list columns stay lists and struct columns become objects."""
    return list(iter_parquet(name))


def iter_parquet(name: str) -> Iterator[Row]:
    """:func:`read_parquet`, a record batch at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not Path(name).exists():
        raise DataError(name, None, "file not found")
    try:
        batches = pq.ParquetFile(name).iter_batches(batch_size=BATCH_ROWS)
        line = 0
        for batch in batches:
            for row in batch.to_pylist():
                line += 1
                yield Record(name, line, without_nulls(row))
    except (pa.ArrowException, OSError) as exc:
        raise DataError(name, None, f"not a readable Parquet file ({exc})") from None


def is_saved_dataset(name: str) -> bool:
    """Whether a folder was written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    folder = Path(name)
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "dataset_info.json").is_file() and (folder / "state.json").is_file())


def read_saved_dataset(name: str) -> list[Row]:
    """Rows of a saved dataset: a Dataset, or the "train" (or only) split of a DatasetDict."""
    return list(iter_saved_dataset(name))


def iter_saved_dataset(name: str) -> Iterator[Row]:
    """:func:`read_saved_dataset`, a batch at a time from the memory-mapped dataset: a Dataset, or the "train"
    (or only) split of a DatasetDict.

    Rows of a split are located in that split's own folder (``<folder>/train``), which is where they live.
    """
    from datasets import DatasetDict, load_from_disk

    try:
        loaded = load_from_disk(name)
    except Exception as exc:  # datasets raises many kinds here; all mean "this folder cannot be read"
        raise DataError(name, None, f"cannot load the saved dataset ({type(exc).__name__}: {exc})") from None
    where = name
    if isinstance(loaded, DatasetDict):
        splits = list(loaded)
        if "train" in loaded:
            split = "train"
        elif len(splits) == 1:
            split = splits[0]
        else:
            raise DataError(name, None, f"a dataset with splits {', '.join(splits)} and no 'train' split; point "
                                        f"the recipe at one split's folder, e.g. {Path(name) / splits[0]}")
        loaded = loaded[split]
        where = str(Path(name) / split)
        logger.info("%s: using split '%s' of %s", name, split, ", ".join(splits))
    for start in range(0, len(loaded), BATCH_ROWS):
        for i, row in enumerate(loaded.select(range(start, min(start + BATCH_ROWS, len(loaded)))).to_list()):
            yield Record(where, start + i + 1, without_nulls(dict(row)))


def _cell(text: str) -> Any:
    """A CSV cell's value: JSON arrays and objects decoded, anything else the text itself."""
    stripped = text.strip()
    if stripped[:1] + stripped[-1:] in ("[]", "{}"):
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError:
            return text  # bracketed prose such as "[注意] ..." stays text
        if isinstance(value, (list, dict)):
            return value
    return text


def _header(name: str, cells: list[str], line: int) -> list[str]:
    columns = [c.strip() for c in cells]
    for i, column in enumerate(columns, start=1):
        if not column:
            raise DataError(name, line, f"header: column {i} has no name")
        if columns.index(column) != i - 1:
            raise DataError(name, line, f"header: column '{column}' appears twice")
    return columns


def read_delimited(name: str, text: str, delimiter: str) -> list[Row]:
    """Rows of a CSV (``,``) or TSV (tab) text whose first non-blank row is the header.

    A row with more or fewer cells than the header is a bad row (its DataError is returned in its place);
    blank rows are skipped like blank lines in JSON Lines.
    """
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    columns: list[str] | None = None
    rows: list[Row] = []
    start = 1  # the physical line the next row starts on
    try:
        for cells in reader:
            line, start = start, reader.line_num + 1
            if not any(c.strip() for c in cells):
                continue
            if columns is None:
                columns = _header(name, cells, line)
                continue
            if len(cells) != len(columns):
                rows.append(DataError(name, line, f"row has {len(cells)} cells but the header has "
                                                  f"{len(columns)} columns ({', '.join(columns)})"))
                continue
            rows.append(Record(name, line, {c: _cell(v) for c, v in zip(columns, cells) if v != ""}))
    except csv.Error as exc:
        # The quoting is broken, so where later rows start is unknown: nothing after this point can be trusted.
        raise DataError(name, start, f"invalid {'TSV' if delimiter == chr(9) else 'CSV'}: {exc}") from None
    return rows
