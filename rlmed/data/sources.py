"""Reading a stage's data input (a list of sources, local files or Hub ids) into rows, mixed by weight.

Each source is read (rlmed.data.records: any supported file or a saved dataset folder), its columns renamed
(its ``columns:``), every row converted by the stage's converter, and bad rows either stop the stage with
``file:line: reason`` (``on_bad_rows: fail``, the default) or are dropped and counted (``skip``). The counts
travel with the mixed rows so a stage can put them into its manifest (:func:`bad_row_metrics`).

`DataSource` (one resolved source) lives here, below the stages, so that data code never imports the stage
contract; rlmed.stages.base re-exports it for stage files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Literal, Sequence, TypeVar

from rlmed.data.columns import rename_rows
from rlmed.data.dialogues import DoctorPrompt, as_doctor_prompts
from rlmed.data.formats import as_messages, as_text
from rlmed.data.mixing import MixResult, mix
from rlmed.data.pairwise import Pair, as_pair
from rlmed.data.records import DataError, Record, Row, scan_records
from rlmed.data.tables import without_nulls

logger = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["DataSource", "SourceRows", "scan_source", "source_records", "convert_source", "load_sources",
           "bad_row_metrics", "dialogue", "text", "pair", "doctor_prompts"]

# How many bad-row messages are kept for logs and manifests; the count covers the rest.
MAX_REASONS = 5


@dataclass(frozen=True)
class DataSource:
    """One data file of a `data` input, as resolved from the recipe.

    `columns` renames the user's columns to rlmed's field names as rows are read ({rlmed field: user column});
    `on_bad_rows` says whether a row that fails conversion stops the stage ("fail") or is dropped and counted
    ("skip"), since large scraped datasets rarely come without a few broken rows.
    """

    path: str  # absolute local path, or a Hub dataset id
    weight: float | None = None
    format: str | None = None
    is_local: bool = True
    # Left out of the hash (a dict cannot be hashed) but not of equality; the runner hashes asdict(), not this.
    columns: dict[str, str] | None = field(default=None, hash=False)
    on_bad_rows: Literal["fail", "skip"] = "fail"


@dataclass
class SourceRows(Generic[T]):
    """One source's converted rows, and how many bad rows `on_bad_rows: skip` dropped (first reasons kept)."""

    items: list[T]
    bad_rows: int = 0
    reasons: list[str] = field(default_factory=list)


def _hub_rows(source: DataSource) -> list[Row]:
    try:
        from datasets import load_dataset

        table = load_dataset(source.path, split="train")
    except Exception as exc:  # no hub here, a typo, or a gated dataset: all need the user to act
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise DataError(source.path, None,
                        f"not a local file, and the Hub dataset could not be loaded ({type(exc).__name__}: "
                        f"{first}); download it (datasets' save_to_disk, or a .parquet/.jsonl file) and point "
                        f"the recipe at the local copy") from exc
    # Hub rows are Arrow rows like a Parquet file's: nulls stand for absent fields.
    return [Record(source.path, i + 1, without_nulls(dict(row))) for i, row in enumerate(table)]


def scan_source(source: DataSource) -> list[Row]:
    """Rows of one source, columns renamed; a row that could not be read is its DataError, in place."""
    rows = scan_records(source.path) if source.is_local else _hub_rows(source)
    return rename_rows(rows, source.columns)


def source_records(source: DataSource) -> list[Record]:
    """Rows of one source with their place (file and line, or Hub id and row number), columns renamed.

    The first unreadable row raises its DataError, whatever `on_bad_rows` says: skipping needs a converter to
    judge rows by, so it lives in :func:`convert_source`.
    """
    rows = scan_source(source)
    for row in rows:
        if isinstance(row, DataError):
            raise row
    return rows  # type: ignore[return-value]  # no DataError left in it


def convert_source(source: DataSource, convert: Callable[[Record, str | None], T]) -> SourceRows[T]:
    """Convert every row of one source, failing on or skipping bad rows as the source's `on_bad_rows` says.

    Skipping still fails when no row survives, since a stage fed nothing would fail later and less clearly.
    """
    rows = scan_source(source)
    out: SourceRows[T] = SourceRows(items=[])
    for row in rows:
        try:
            if isinstance(row, DataError):
                raise row
            out.items.append(convert(row, source.format))
        except DataError as exc:
            if source.on_bad_rows != "skip":
                raise
            out.bad_rows += 1
            if len(out.reasons) < MAX_REASONS:
                out.reasons.append(str(exc))
    if out.bad_rows:
        logger.warning("%s: skipped %d bad row(s) of %d (on_bad_rows: skip); the first: %s",
                       source.path, out.bad_rows, len(rows), out.reasons[0])
        if not out.items:
            raise DataError(source.path, None, f"every row is bad ({out.bad_rows} skipped with on_bad_rows: "
                                               f"skip); the first: {out.reasons[0]}")
    return out


Weights = Sequence[float] | Callable[[list[int]], Sequence[float] | None]


def load_sources(sources: Sequence[DataSource], convert: Callable[[Record, str | None], T],
                 seed: int, total: int | None = None, weights: Weights | None = None,
                 keep_order: bool = False) -> MixResult[T]:
    """Convert every row of every source, then mix.

    A bad row raises its DataError, or is skipped and counted for a source with `on_bad_rows: skip`; the
    result's `bad_rows` (by path) and `bad_row_reasons` report the skipped ones. `weights` overrides the
    sources' own — as numbers, or as a function of the sources' row counts (after skipping) for callers whose
    weights depend on sizes; with neither, every row is used once. `keep_order` concatenates the sources in
    file order instead of mixing (for stages whose output follows the input, like kb_instructions).
    """
    converted = [convert_source(source, convert) for source in sources]
    if keep_order:
        result = MixResult(items=[item for c in converted for item in c.items],
                           source_ids=[i for i, c in enumerate(converted) for _ in c.items],
                           counts=[len(c.items) for c in converted])
    else:
        if callable(weights):
            weights = weights([len(c.items) for c in converted])
        if weights is None and any(s.weight is not None for s in sources):
            weights = [s.weight or 0.0 for s in sources]
        result = mix([c.items for c in converted], weights, seed=seed, total=total)
    for source, rows, count in zip(sources, converted, result.counts):
        logger.info("data %s: %d rows, %d used%s", source.path, len(rows.items), count,
                    f", {rows.bad_rows} bad rows skipped" if rows.bad_rows else "")
        if rows.bad_rows:
            result.bad_rows[source.path] = result.bad_rows.get(source.path, 0) + rows.bad_rows
            result.bad_row_reasons += rows.reasons[: MAX_REASONS - len(result.bad_row_reasons)]
    return result


def bad_row_metrics(result: MixResult[Any], prefix: str = "") -> dict[str, Any]:
    """Manifest metrics for skipped rows: the total always, and per source with the first reasons when any."""
    total = sum(result.bad_rows.values())
    metrics: dict[str, Any] = {f"{prefix}bad_rows": total}
    if total:
        metrics[f"{prefix}bad_rows_by_source"] = dict(result.bad_rows)
        metrics[f"{prefix}bad_row_reasons"] = list(result.bad_row_reasons)
    return metrics


def dialogue(record: Record, fmt: str | None) -> list[dict[str, Any]]:
    """A training dialogue (ends with the assistant)."""
    return as_messages(record, fmt)


def text(record: Record, fmt: str | None) -> str:
    """Text for pretraining; dialogue rows are flattened (hybrid instruction pretraining)."""
    return as_text(record, fmt)


def pair(record: Record, fmt: str | None) -> Pair:
    """A preference pair (prompt, chosen, rejected), for reward-model and DPO-style stages."""
    return as_pair(record, fmt)


def doctor_prompts(record: Record, fmt: str | None) -> list[DoctorPrompt]:
    """Prompts with the real doctor's reply; one row may give several (one per doctor turn of a dialogue).

    Mixing treats each row's list as one item (a dialogue's turns stay together); flatten after mixing.
    """
    return as_doctor_prompts(record, fmt)
