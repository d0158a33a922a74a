"""Reading a stage's data input (a list of sources, local files or Hub ids) into rows, mixed by weight."""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence, TypeVar

from rlmed.data.formats import as_messages, as_text
from rlmed.data.mixing import MixResult, mix
from rlmed.data.records import DataError, Record, read_records
from rlmed.stages.base import DataSource

logger = logging.getLogger(__name__)
T = TypeVar("T")


def source_records(source: DataSource) -> list[Record]:
    """Rows of one source with their place: file and line, or Hub id and row number."""
    if source.is_local:
        return read_records(source.path)
    try:
        from datasets import load_dataset

        table = load_dataset(source.path, split="train")
    except Exception as exc:  # no hub here, a typo, or a gated dataset: all need the user to act
        raise DataError(source.path, None,
                        f"not a local file, and the Hub dataset could not be loaded ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}); download it and point the recipe at "
                        f"a local file") from exc
    return [Record(source.path, i + 1, dict(row)) for i, row in enumerate(table)]


def load_sources(sources: Sequence[DataSource], convert: Callable[[Record, str | None], T],
                 seed: int, total: int | None = None, weights: Sequence[float] | None = None) -> MixResult[T]:
    """Convert every row of every source (first bad row raises its DataError), then mix.

    `weights` overrides the sources' own; with neither, every row is used once.
    """
    rows = [[convert(record, source.format) for record in source_records(source)] for source in sources]
    if weights is None and any(s.weight is not None for s in sources):
        weights = [s.weight or 0.0 for s in sources]
    result = mix(rows, weights, seed=seed, total=total)
    for source, size, count in zip(sources, (len(r) for r in rows), result.counts):
        logger.info("data %s: %d rows, %d used", source.path, size, count)
    return result


def dialogue(record: Record, fmt: str | None) -> list[dict[str, Any]]:
    """A training dialogue (ends with the assistant)."""
    return as_messages(record, fmt)


def text(record: Record, fmt: str | None) -> str:
    """Text for pretraining; dialogue rows are flattened (hybrid instruction pretraining)."""
    return as_text(record, fmt)
