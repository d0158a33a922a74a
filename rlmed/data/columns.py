"""Renaming a user's columns to the field names rlmed's converters read (a data source's ``columns:``).

Datasets name the same thing differently (``question``/``answer``, ``query``/``response``), so a recipe can say
``columns: {instruction: question, output: answer}`` (rlmed's field: the user's column) instead of asking the
user to rewrite the file. The renaming happens when rows are read, so every converter sees rlmed's names, and
the Record remembers it, so a missing field is reported under the user's column name.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Mapping

from rlmed.data.records import Record, Row

__all__ = ["rename_columns", "rename_rows"]


def rename_columns(record: Record, columns: Mapping[str, str]) -> Record:
    """The record with each user column renamed to its rlmed field.

    All renames happen at once (so ``{a: b, b: a}`` swaps two columns), and a field the mapping fills is taken
    only from the mapped column: a row that also has a column named like the field loses it, rather than the
    converter silently reading the wrong column when the mapped one is absent.
    """
    mapped = {user for user in columns.values()} | set(columns)
    row = {key: value for key, value in record.row.items() if key not in mapped}
    for internal, user in columns.items():
        if user in record.row:
            row[internal] = record.row[user]
    renamed = tuple((internal, user) for internal, user in columns.items() if internal != user)
    return Record(record.path, record.line, row, columns=record.columns + renamed)


def rename_rows(rows: Iterable[Row], columns: Mapping[str, str] | None) -> Iterator[Row]:
    """Apply ``columns`` to every readable row as it comes; bad rows (DataErrors) pass through untouched."""
    for row in rows:
        yield rename_columns(row, columns) if columns and isinstance(row, Record) else row
