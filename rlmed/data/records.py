"""Read user data files into rows that remember where they came from.

Every row a user brings passes through :func:`read_records`, and every
complaint about user data in rlmed is a :class:`DataError` that names the file
and line, so a bad row in a million-line file can be found and fixed without
bisecting the file by hand.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from tqdm import tqdm

logger = logging.getLogger(__name__)

__all__ = ["DataError", "Record", "Row", "iter_records", "read_records", "scan_records", "type_name",
           "SUPPORTED_EXTENSIONS"]

SUPPORTED_EXTENSIONS = (".jsonl", ".json", ".txt", ".parquet", ".csv", ".tsv")
_EXPECTED_FILES = ".jsonl, .json, .txt, .parquet, .csv, .tsv or a datasets save_to_disk folder"

# Progress bars only help on inputs big enough to take noticeable time; below
# this they are noise (and would clutter test output).
PROGRESS_MIN_ITEMS = 10_000
PROGRESS_BYTES_PER_ITEM = 500  # a file is "big" from about PROGRESS_MIN_ITEMS rows of this size

_JSON_WS = re.compile(r"[ \t\n\r]*")
_BOM = b"\xef\xbb\xbf"


class DataError(ValueError):
    """A problem with user data, located by file and (when known) line.

    Subclasses ValueError so generic handlers still catch it, while callers
    that want the location can read ``path``, ``line`` and ``reason``.
    """

    def __init__(self, path: str | Path, line: int | None, reason: str) -> None:
        self.path = str(path)
        self.line = line
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.path}: {self.reason}"
        return f"{self.path}:{self.line}: {self.reason}"

    def __reduce__(self):  # keep picklable across worker processes
        return (type(self), (self.path, self.line, self.reason))


@dataclass(frozen=True)
class Record:
    """One row of user data plus the file and 1-based line where it starts.

    ``columns`` holds the (rlmed field, user column) pairs a recipe's ``columns:`` renamed in this row, so an
    error about a missing field names the column the user actually has to add (see rlmed.data.columns).
    """

    path: str
    line: int
    row: dict
    columns: tuple[tuple[str, str], ...] = field(default=(), compare=False, repr=False)

    def error(self, reason: str) -> DataError:
        """Build a DataError pointing at this record, for the caller to raise."""
        for internal, user in self.columns:
            # Converters only know rlmed's field names; the user only knows their own columns.
            reason, renamed = re.subn(rf"^missing field '{re.escape(internal)}'(?: \((.*?)\))?",
                                      lambda m: f"missing field '{user}' (mapped to '{internal}' by columns"
                                                + (f"; {m.group(1)})" if m.group(1) else ")"),
                                      reason, count=1)
            if renamed:
                break
        absent = [f"'{user}' (for '{internal}')" for internal, user in self.columns if internal not in self.row]
        if absent and reason.startswith("cannot detect"):
            # The format was not recognised because a mapped column is missing: say which.
            reason += f"; mapped column(s) missing in this row: {', '.join(absent)}"
        return DataError(self.path, self.line, reason)


# A row as read from a file: its Record, or the DataError saying why that row could not be read (bad JSON on
# one .jsonl line, a CSV row with too many cells). Kept in place so `on_bad_rows: skip` can drop just that row.
Row = Record | DataError


def type_name(value: Any) -> str:
    """Name a JSON value's type the way error messages in rlmed spell it."""
    if value is None:
        return "null"
    return type(value).__name__


def progress_disabled(n: int | None) -> bool | None:
    """tqdm ``disable`` value: off for small inputs, automatic (TTY only) otherwise."""
    if n is not None and n < PROGRESS_MIN_ITEMS:
        return True
    return None


def read_records(path: str | Path, text_unit: str = "line") -> list[Record]:
    """Read a data file (or a ``datasets`` save_to_disk folder) into Records; the first bad row raises.

    Files: ``.jsonl``, ``.json`` (top-level array), ``.txt`` (one document per line, or per paragraph with
    ``text_unit="paragraph"``), ``.parquet``, ``.csv``/``.tsv``
    (header first). Accepts a UTF-8 BOM and CRLF line endings. Raises DataError for a missing file, unknown
    extension, undecodable bytes, bad JSON, non-object rows, or a file with no rows at all.
    """
    rows = scan_records(path, text_unit)
    for row in rows:
        if isinstance(row, DataError):
            raise row
    return rows  # type: ignore[return-value]  # no DataError left in it


def scan_records(path: str | Path, text_unit: str = "line") -> list[Row]:
    """Like :func:`read_records`, but a bad row comes back in place as its DataError instead of raising.

    Only problems of one row are returned this way (an invalid .jsonl line, a non-object item, a CSV row with
    the wrong number of cells); a file that cannot be read at all (not found, unknown extension, broken .json
    array, not UTF-8, no rows) still raises, since no row of it can be trusted.
    """
    return list(iter_records(path, text_unit=text_unit))


def iter_records(path: str | Path, progress: bool = True, text_unit: str = "line") -> Iterator[Row]:
    """:func:`scan_records` one row at a time. JSON Lines, text and Parquet files and saved datasets are
    streamed, so memory does not grow with the file (rlmed.data.prepared writes the rows to Arrow as they
    come); a .json array or a CSV/TSV file is read whole first, as its structure needs. The file-level errors
    of :func:`scan_records` are raised when reached, rows before them having been yielded."""
    from rlmed.data import tables  # late: tables imports this module

    name = str(path)
    count = 0
    if Path(name).is_dir():
        if not tables.is_saved_dataset(name):
            raise DataError(name, None, "is a directory, expected a data file or a folder written by datasets' "
                                        "save_to_disk (with dataset_info.json and state.json, or dataset_dict.json)")
        rows: Iterable[Row] = tables.iter_saved_dataset(name)
    else:
        ext = Path(name).suffix.lower()
        if ext not in SUPPORTED_EXTENSIONS:
            raise DataError(name, None, f"unsupported data file extension '{ext}'; expected {_EXPECTED_FILES}")
        if ext == ".parquet":
            rows = tables.iter_parquet(name)
        elif ext in (".jsonl", ".txt"):
            lines = _iter_lines(name, progress)
            rows = _read_jsonl(name, lines) if ext == ".jsonl" else _read_txt(name, lines, text_unit)
        else:
            text = _decode(name, _read_bytes(name))
            if ext == ".json":
                rows = _read_json_array(name, text)
            else:
                rows = tables.read_delimited(name, text, "\t" if ext == ".tsv" else ",")
    for row in rows:
        count += 1
        yield row
    if not count:
        raise DataError(name, None, "no rows")
    logger.debug("read %d rows from %s", count, name)


def _read_bytes(name: str) -> bytes:
    try:
        return Path(name).read_bytes()
    except FileNotFoundError:
        raise DataError(name, None, "file not found") from None
    except IsADirectoryError:
        raise DataError(name, None, "is a directory, expected a data file") from None


def _decode(name: str, raw: bytes) -> str:
    """Decode UTF-8 (BOM optional) and normalise CRLF, locating bad bytes by line."""
    if raw.startswith(_BOM):
        raw = raw[len(_BOM):]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        bad = raw[e.start:e.start + 1].hex()
        raise DataError(
            name, line, f"file is not valid UTF-8 (byte 0x{bad} at column {column})"
        ) from None
    # Normalising up front keeps line counting and JSON columns identical for
    # files written on Windows and elsewhere.
    return text.replace("\r\n", "\n")


def _json_error(name: str, line: int, e: json.JSONDecodeError) -> DataError:
    return DataError(name, line, f"invalid JSON: {e.msg} at column {e.colno}")


def _object_row(name: str, line: int, value: Any) -> Row:
    if not isinstance(value, dict):
        return DataError(name, line, f"expected a JSON object, got {type_name(value)}")
    return Record(name, line, value)


def _iter_lines(name: str, progress: bool) -> Iterator[tuple[int, str]]:
    """(1-based number, text) of each line of a UTF-8 file, read as a stream: a BOM at the start is dropped,
    CRLF endings count as LF, and bytes that are not UTF-8 raise with their line and column."""
    try:
        handle = open(name, "rb")
    except FileNotFoundError:
        raise DataError(name, None, "file not found") from None
    except IsADirectoryError:
        raise DataError(name, None, "is a directory, expected a data file") from None
    with handle, tqdm(total=os.fstat(handle.fileno()).st_size, desc=f"reading {Path(name).name}", unit="B",
                      unit_scale=True, disable=True if not progress else progress_disabled(
                          os.fstat(handle.fileno()).st_size // PROGRESS_BYTES_PER_ITEM)) as bar:
        for number, raw in enumerate(handle, start=1):
            bar.update(len(raw))
            if number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            if raw.endswith(b"\n"):
                raw = raw[:-1]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                bad = raw[e.start:e.start + 1].hex()
                raise DataError(name, number, f"file is not valid UTF-8 (byte 0x{bad} at column {e.start + 1})"
                                ) from None


def _read_jsonl(name: str, lines: Iterable[tuple[int, str]]) -> Iterator[Row]:
    for number, line in lines:
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            # One broken line leaves the others readable, so it is a bad row, not a bad file.
            yield _json_error(name, number, e)
            continue
        yield _object_row(name, number, value)


def _read_json_array(name: str, text: str) -> list[Row]:
    """Walk a top-level JSON array object by object to learn each one's line."""
    decoder = json.JSONDecoder()
    pos = _JSON_WS.match(text, 0).end()
    if pos == len(text):
        return []
    if text[pos] != "[":
        # Parse anyway so malformed JSON gets the decoder's located message.
        try:
            value, _ = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise _json_error(name, e.lineno, e) from None
        raise DataError(
            name, None,
            f"expected a top-level JSON array of objects, got {type_name(value)}",
        )

    records: list[Row] = []
    line = 1
    counted_to = 0  # count newlines incrementally; recounting from 0 is quadratic
    pos = _JSON_WS.match(text, pos + 1).end()
    if pos < len(text) and text[pos] == "]":
        pos += 1
    else:
        while True:
            try:
                value, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as e:
                raise _json_error(name, e.lineno, e) from None
            line += text.count("\n", counted_to, pos)
            counted_to = pos
            records.append(_object_row(name, line, value))
            pos = _JSON_WS.match(text, end).end()
            if pos < len(text) and text[pos] == ",":
                pos = _JSON_WS.match(text, pos + 1).end()
                continue
            if pos < len(text) and text[pos] == "]":
                pos += 1
                break
            raise _structure_error(name, text, pos, "expected ',' or ']' in the top-level array")
    pos = _JSON_WS.match(text, pos).end()
    if pos != len(text):
        raise _structure_error(name, text, pos, "unexpected data after the top-level array")
    return records


def _structure_error(name: str, text: str, pos: int, what: str) -> DataError:
    line = text.count("\n", 0, pos) + 1
    column = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return DataError(name, line, f"invalid JSON: {what} at column {column}")


def _read_txt(name: str, lines: Iterable[tuple[int, str]], text_unit: str = "line") -> Iterator[Row]:
    """Plain text as ``{"text": ...}`` rows at their first line: one per non-blank line (``text_unit="line"``),
    or one per paragraph, paragraphs being separated by blank lines (``"paragraph"``)."""
    if text_unit == "line":
        for number, line in lines:
            if line.strip():
                yield Record(name, number, {"text": line})
        return
    paragraph: list[str] = []
    start = 0
    blank_seen = False
    for number, line in lines:
        if line.strip():
            if not paragraph:
                start = number
            paragraph.append(line)
        elif paragraph:
            blank_seen = True
            yield Record(name, start, {"text": "\n".join(paragraph)})
            paragraph = []
    if paragraph:
        if not blank_seen and len(paragraph) > 1:
            # A one-document-per-line file read by paragraphs would become a single giant document.
            logger.warning("%s: no blank line in its %d lines, so text_unit: paragraph reads it as one document; "
                           "set text_unit: line if each line is a document", name, len(paragraph))
        yield Record(name, start, {"text": "\n".join(paragraph)})
