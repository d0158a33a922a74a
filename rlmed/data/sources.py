"""Reading a stage's data input (a list of sources, local files or Hub ids) into rows, mixed by weight.

Each source is read (rlmed.data.records: any supported file or a saved dataset folder), its columns renamed
(its ``columns:``), every row converted by the stage's converter, and bad rows either stop the stage with
``file:line: reason`` (``on_bad_rows: fail``, the default) or are dropped and counted (``skip``). The counts
travel with the mixed rows so a stage can put them into its manifest (:func:`bad_row_metrics`).

`DataSource` (one resolved source) lives here, below the stages, so that data code never imports the stage
contract; rlmed.stages.base re-exports it for stage files.
"""

from __future__ import annotations

import dataclasses
import logging
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generic, Iterator, Literal, Sequence, TypeVar

from rlmed.data.columns import rename_rows
from rlmed.data.dialogues import DoctorPrompt, as_doctor_prompts
from rlmed.data.formats import as_messages, as_text
from rlmed.data.mixing import MixPlan, MixResult, plan_mix
from rlmed.data.prepared import ArrowItems, Codec, DataCache, write_items
from rlmed.data.pairwise import Pair, as_pair
from rlmed.artifacts import stable_hash
from rlmed.data.records import DataError, Record, Row, iter_records
from rlmed.data.tables import without_nulls

logger = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["DataSource", "SourceRows", "scan_source", "source_records", "convert_source", "load_sources",
           "bad_row_metrics", "flat_doctor_prompts", "dialogue", "text", "pair", "doctor_prompts"]

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
    # How a .txt file splits into documents: one per line (as datasets' text loader, MedicalGPT and LLaMA-Factory
    # read them) or one per blank-line-separated paragraph. Other formats ignore it.
    text_unit: Literal["line", "paragraph"] = "line"
    # A Hub dataset's configuration (e.g. shibing624/medical's finetune) and split; local files ignore them.
    config: str | None = None
    split: str = "train"


@dataclass
class SourceRows(Generic[T]):
    """One source's converted rows, and how many bad rows `on_bad_rows: skip` dropped (first reasons kept)."""

    items: list[T]
    bad_rows: int = 0
    reasons: list[str] = field(default_factory=list)


def _hub_rows(source: DataSource) -> Iterator[Row]:
    try:
        from datasets import load_dataset

        table = load_dataset(source.path, source.config, split=source.split)
    except Exception as exc:  # no hub here, a typo, or a gated dataset: all need the user to act
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise DataError(source.path, None,
                        f"not a local file, and the Hub dataset could not be loaded ({type(exc).__name__}: "
                        f"{first}); download it (datasets' save_to_disk, or a .parquet/.jsonl file) and point "
                        f"the recipe at the local copy") from exc
    # Hub rows are Arrow rows like a Parquet file's: nulls stand for absent fields.
    for i, row in enumerate(table):
        yield Record(source.path, i + 1, without_nulls(dict(row)))


def iter_source(source: DataSource) -> Iterator[Row]:
    """Rows of one source as a stream, columns renamed; a row that could not be read is its DataError."""
    rows = iter_records(source.path, text_unit=source.text_unit) if source.is_local else _hub_rows(source)
    return rename_rows(rows, source.columns)


def scan_source(source: DataSource) -> list[Row]:
    """Rows of one source, columns renamed; a row that could not be read is its DataError, in place."""
    return list(iter_source(source))


def source_records(source: DataSource, limit: int | None = None) -> list[Record]:
    """Rows of one source with their place (file and line, or Hub id and row number), columns renamed; with a
    `limit`, only the first that many, read as a stream (the rest of the file is not read).

    The first unreadable row raises its DataError, whatever `on_bad_rows` says: skipping needs a converter to
    judge rows by, so it lives in :func:`convert_source`.
    """
    rows: list[Record] = []
    for row in iter_source(source):
        if limit is not None and len(rows) >= limit:
            break
        if isinstance(row, DataError):
            raise row
        rows.append(row)
    return rows


def iter_converted(source: DataSource, convert: Callable[[Record, str | None], T],
                   out: SourceRows[Any]) -> Iterator[T]:
    """Convert every row of one source as it is read, failing on or skipping bad rows as the source's
    `on_bad_rows` says; `out` collects the skipped count and first reasons. Skipping still fails when no row
    survives, since a stage fed nothing would fail later and less clearly."""
    rows = kept = 0
    for row in iter_source(source):
        rows += 1
        try:
            if isinstance(row, DataError):
                raise row
            item = convert(row, source.format)
        except DataError as exc:
            if source.on_bad_rows != "skip":
                raise
            out.bad_rows += 1
            if len(out.reasons) < MAX_REASONS:
                out.reasons.append(str(exc))
            continue
        kept += 1
        yield item
    if out.bad_rows:
        logger.warning("%s: skipped %d bad row(s) of %d (on_bad_rows: skip); the first: %s",
                       source.path, out.bad_rows, rows, out.reasons[0])
        if not kept:
            raise DataError(source.path, None, f"every row is bad ({out.bad_rows} skipped with on_bad_rows: "
                                               f"skip); the first: {out.reasons[0]}")


def convert_source(source: DataSource, convert: Callable[[Record, str | None], T]) -> SourceRows[T]:
    """Every row of one source converted (see :func:`iter_converted`)."""
    out: SourceRows[T] = SourceRows(items=[])
    out.items = list(iter_converted(source, convert, out))
    return out


Weights = Sequence[float] | Callable[[list[int]], Sequence[float] | None]


def load_sources(sources: Sequence[DataSource], convert: Callable[[Record, str | None], T],
                 seed: int, total: int | None = None, weights: Weights | None = None,
                 keep_order: bool = False, cache: DataCache | None = None) -> MixResult[T]:
    """Convert every row of every source, then mix.

    A bad row raises its DataError, or is skipped and counted for a source with `on_bad_rows: skip`; the
    result's `bad_rows` (by path) and `bad_row_reasons` report the skipped ones. `weights` overrides the
    sources' own — as numbers, or as a function of the sources' row counts (after skipping) for callers whose
    weights depend on sizes; with neither, every row is used once. `keep_order` concatenates the sources in
    file order instead of mixing (for stages whose output follows the input, like kb_instructions).

    With a `cache` and a :class:`Codec` converter the rows go through Arrow (rlmed.data.prepared): each source
    is converted once into the cache, and the result's `items` is an ArrowItems sequence over the memory-mapped
    rows, mixed in the same order as the in-memory path gives.
    """
    arrow = cache is not None and isinstance(convert, Codec)
    if arrow:
        per_source = [_prepared_source(cache, source, convert) for source in sources]
        sizes = [record["rows"] for _, record in per_source]
        converted = [SourceRows(items=[], bad_rows=record["bad_rows"], reasons=record["reasons"])
                     for _, record in per_source]
    else:
        converted = [convert_source(source, convert) for source in sources]
        sizes = [len(c.items) for c in converted]
    if keep_order:
        offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        plan = MixPlan(order=array("q", range(sum(sizes))), counts=sizes, offsets=offsets)
    else:
        if callable(weights):
            weights = weights(sizes)
        if weights is None and any(s.weight is not None for s in sources):
            weights = [s.weight or 0.0 for s in sources]
        plan = plan_mix(sizes, weights, seed=seed, total=total)
    source_ids = plan.source_ids()
    if arrow:
        import numpy as np

        key = stable_hash({"sources": [folder.name for folder, _ in per_source], "order": plan.digest()})
        items: Sequence[Any] = ArrowItems(cache.root, [(folder.name, record["rows"]) for folder, record in per_source],
                                          np.frombuffer(plan.order, dtype=np.int64), convert.decode, key)
    else:
        flat = [item for c in converted for item in c.items]
        items = [flat[index] for index in plan.order]
    result = MixResult(items=items, source_ids=source_ids, counts=plan.counts)  # type: ignore[arg-type]
    for source, rows, size, count in zip(sources, converted, sizes, result.counts):
        logger.info("data %s: %d rows, %d used%s", source.path, size, count,
                    f", {rows.bad_rows} bad rows skipped" if rows.bad_rows else "")
        if rows.bad_rows:
            result.bad_rows[source.path] = result.bad_rows.get(source.path, 0) + rows.bad_rows
            result.bad_row_reasons += rows.reasons[: MAX_REASONS - len(result.bad_row_reasons)]
    return result


def _prepared_source(cache: DataCache, source: DataSource, codec: Codec[Any]) -> tuple[Path, dict[str, Any]]:
    """One source converted into the cache (or found there): its entry folder and record."""
    hub = f"hub:{source.path}:{source.config}:{source.split}"
    content = cache.content_hash(source.path) if source.is_local else hub
    # The path too: rows remember it (in bad-row messages, and a converter may read it, e.g. mole's task name).
    parts = {"path": source.path, "content": content, "columns": source.columns, "format": source.format,
             "on_bad_rows": source.on_bad_rows, "text_unit": source.text_unit, "converter": codec.name}

    def build(folder: Path) -> dict[str, Any]:
        out: SourceRows[Any] = SourceRows(items=[])
        rows = write_items(folder / "rows.arrow", iter_converted(source, codec.convert, out), codec.encode)
        return {"source": source.path, "rows": rows, "bad_rows": out.bad_rows, "reasons": out.reasons}

    return cache.entry("rows", parts, build)


def flat_doctor_prompts(sources: Sequence[DataSource], seed: int, max_prompts: int | None = None,
                        cache: DataCache | None = None) -> list[DoctorPrompt]:
    """Every doctor prompt of `sources` in file order (a dialogue's turns in turn), the first `max_prompts`:
    what the stages that sample answers to consultations (ai_feedback, grpo/rloo/ppo, rubrics) start from.

    With a `cache` the sources are converted through Arrow (read as a stream, once per node) and only the
    prompts used are decoded: a cap of a few thousand prompts over a file of millions holds those few thousand.
    Every row is still converted, so a bad row anywhere fails (or is skipped) as it does without the cap."""
    loaded = load_sources(sources, doctor_prompts, seed=seed, keep_order=True, cache=cache)
    prompts: list[DoctorPrompt] = []
    for row in loaded.items:
        for prompt in row:
            if max_prompts is not None and len(prompts) >= max_prompts:
                return prompts
            prompts.append(prompt)
    return prompts


def bad_row_metrics(result: MixResult[Any], prefix: str = "") -> dict[str, Any]:
    """Manifest metrics for skipped rows: the total always, and per source with the first reasons when any."""
    total = sum(result.bad_rows.values())
    metrics: dict[str, Any] = {f"{prefix}bad_rows": total}
    if total:
        metrics[f"{prefix}bad_rows_by_source"] = dict(result.bad_rows)
        metrics[f"{prefix}bad_row_reasons"] = list(result.bad_row_reasons)
    return metrics


def _dialogue(record: Record, fmt: str | None) -> list[dict[str, Any]]:
    return as_messages(record, fmt)


def _text(record: Record, fmt: str | None) -> str:
    return as_text(record, fmt)


def _pair(record: Record, fmt: str | None) -> Pair:
    return as_pair(record, fmt)


def _doctor_prompts(record: Record, fmt: str | None) -> list[DoctorPrompt]:
    return as_doctor_prompts(record, fmt)


# The converters stages read rows with. Each is a Codec, so that with a DataCache its items go through Arrow.
dialogue: Codec[list[dict[str, Any]]] = Codec("dialogue", _dialogue)
"""A training dialogue (ends with the assistant)."""
text: Codec[str] = Codec("text", _text)
"""Text for pretraining; dialogue rows are flattened (hybrid instruction pretraining)."""
pair: Codec[Pair] = Codec("pair", _pair, dataclasses.asdict, lambda d: Pair(**d))
"""A preference pair (prompt, chosen, rejected), for reward-model and DPO-style stages."""
doctor_prompts: Codec[list[DoctorPrompt]] = Codec(
    "doctor_prompts-2",  # 2: a row's own rubric in metadata, HealthBench-layout rows
    _doctor_prompts, lambda items: [dataclasses.asdict(i) for i in items],
    lambda items: [DoctorPrompt(**i) for i in items])
"""Prompts with the real doctor's reply; one row may give several (one per doctor turn of a dialogue).
Mixing treats each row's list as one item (a dialogue's turns stay together); flatten after mixing."""
