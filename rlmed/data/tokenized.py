"""Tokenised training data: dialogues with ids, the assistant mask and the labels under it (sft, mole), and
documents packed into fixed-length blocks (pretrain).

Two paths with the same result: a list is tokenised here in chunks into an in-memory Dataset; the ArrowItems of a
prepared mix (rlmed.data.prepared) go through a cached `datasets.map` with worker processes, and blocks are
packed into a cached Arrow file a batch at a time, so tokens are computed once per node and memory-mapped by
every rank.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Sequence

from rlmed.data.prepared import ArrowItems, DataCache, cached_map, open_files, write_column

__all__ = ["TOKENIZE_CHUNK", "column_values", "dialogue_columns", "packed_blocks", "sft_truncation",
           "skip_trainer_preparation", "tokenize_all", "tokenize_texts", "tokenizer_hash", "trainer_ready"]

TOKENIZE_CHUNK = 1024  # dialogues per batched tokenizer call
COLUMN_BATCH = 20_000  # rows per Arrow batch when one column is read whole (column_values)
# Part of the cache key of tokenised dialogues: change it when dialogue_columns would give other columns.
COLUMNS_VERSION = "sft-ids-mask-labels-1"


def dialogue_columns(tokenizer: Any, dialogues: Sequence[list[dict]]) -> dict[str, list[list[int]]]:
    """`input_ids`, `assistant_masks` (rlmed.data.chat) and the `labels` SFTTrainer trains on: the ids on
    assistant tokens, -100 elsewhere. With `labels` given, SFTTrainer skips building them from the mask (a
    pass that re-reads and re-writes every row) and only truncates or packs; they are the ones it would build."""
    from rlmed.data.chat import tokenize_dialogues

    chunk = tokenize_dialogues(tokenizer, list(dialogues))
    labels = [[t if m else -100 for t, m in zip(ids, mask)]
              for ids, mask in zip(chunk["input_ids"], chunk["assistant_masks"])]
    return {"input_ids": chunk["input_ids"], "assistant_masks": chunk["assistant_masks"], "labels": labels}


def tokenizer_hash(tokenizer: Any) -> str:
    """What tokenisation depends on: the tokenizer's full serialisation (vocabulary, merges, normaliser, added
    tokens), its chat template and its class."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        body = backend.to_str()
    else:  # a slow tokenizer: datasets' own hash of the object
        from datasets.fingerprint import Hasher

        body = Hasher.hash(tokenizer)
    parts = [type(tokenizer).__name__, tokenizer.chat_template, body,
             json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str)]
    return hashlib.sha256(json.dumps(parts, default=str).encode("utf-8")).hexdigest()


def tokenize_all(tokenizer: Any, dialogues: Sequence[Any], name: str, cache: DataCache | None = None,
                 dialogue_of: Callable[[Any], list[dict]] | None = None,
                 truncate: tuple[int, str] | None = None) -> Any:
    """A Dataset of `input_ids`, `assistant_masks` and `labels` (:func:`dialogue_columns`) for the dialogues
    (or for `dialogue_of(item)` of each item, e.g. mole's (dialogue, task) rows). Prepared ArrowItems with a
    cache: a cached map with worker processes, memory-mapped; a list: tokenised here in chunks.

    `truncate` (max_length, "keep_start" | "keep_end") cuts every column as SFTTrainer's preparation would and
    adds `trainable_tokens` (labels not -100 after the cut), for :func:`trainer_ready`: the cut is then part of
    the cached pass instead of a second pass of the trainer's over every row."""
    from datasets import Dataset, Features, Sequence as Column, Value
    from tqdm import tqdm

    pick = dialogue_of or (lambda item: item)

    def batch(items: list[Any]) -> dict[str, list[Any]]:
        columns: dict[str, list[Any]] = dialogue_columns(tokenizer, [pick(i) for i in items])
        if truncate is not None:
            cut = _slice(*truncate)
            columns = {key: [row[cut] for row in rows] for key, rows in columns.items()}
            columns["trainable_tokens"] = [sum(1 for t in labels if t != -100) for labels in columns["labels"]]
        return columns

    if cache is not None and isinstance(dialogues, ArrowItems):
        features = {"input_ids": Column(Value("int32")), "assistant_masks": Column(Value("int8")),
                    "labels": Column(Value("int32"))}
        parts = {"tokenizer": tokenizer_hash(tokenizer), "columns": COLUMNS_VERSION,
                 "pick": None if dialogue_of is None else dialogue_of.__qualname__}
        if truncate is not None:
            features["trainable_tokens"] = Value("int32")
            parts["truncate"] = list(truncate)
        return cached_map(cache, "tokens", dialogues, batch, parts, Features(features), desc=f"tokenising {name}")
    columns: dict[str, list[Any]] = {}
    items = list(dialogues)
    with tqdm(total=len(items), desc=f"tokenising {name}", unit="dialogue", disable=len(items) < 5000) as bar:
        for start in range(0, len(items), TOKENIZE_CHUNK):
            chunk = batch(items[start:start + TOKENIZE_CHUNK])
            for key, values in chunk.items():
                columns.setdefault(key, []).extend(values)
            bar.update(len(chunk["input_ids"]))
    if not columns:
        columns = {"input_ids": [], "assistant_masks": [], "labels": []}
    return Dataset.from_dict(columns)


def _slice(max_length: int, mode: str) -> slice:
    if mode == "keep_start":
        return slice(None, max_length)
    if mode == "keep_end":
        return slice(-max_length, None)
    raise ValueError(f"truncation_mode {mode!r}: expected 'keep_start' or 'keep_end'")


def sft_truncation(config: Any) -> tuple[int, str] | None:
    """(max_length, truncation_mode) when all SFTTrainer would do to tokenised dialogues with labels is cut them
    to max_length and drop the rows left without a trained token (trl 1.x `_prepare_dataset`); None when it
    would do more (packing) or the user asked for something else (no max_length, their own skip)."""
    if (getattr(config, "packing", False) or getattr(config, "eval_packing", None)
            or getattr(config, "padding_free", False) or getattr(config, "max_length", None) is None
            or getattr(config, "truncation_mode", "keep_start") not in ("keep_start", "keep_end")
            or (getattr(config, "dataset_kwargs", None) or {}).get("skip_prepare_dataset")):
        return None
    return config.max_length, config.truncation_mode


def trainer_ready(dataset: Any) -> tuple[Any, int]:
    """A dataset tokenised with `truncate` as SFTTrainer's preparation leaves it: the rows the cut left with no
    trained token dropped (an in-memory selection, nothing rewritten), `trainable_tokens` gone; and how many
    rows were dropped."""
    import numpy as np

    if "trainable_tokens" not in dataset.column_names:
        raise ValueError("trainer_ready needs a dataset tokenised with truncate=... (no trainable_tokens column)")
    counts = column_values(dataset, "trainable_tokens")
    keep = np.flatnonzero(counts > 0)
    rows, kept = len(counts), len(keep)
    del counts
    if kept < rows:
        dataset = dataset.select(keep)
    return dataset.remove_columns(["trainable_tokens"]), rows - kept


def column_values(dataset: Any, name: str) -> Any:
    """One column of a Dataset as a numpy array, read in Arrow batches through any selection. Neither the numpy
    format (row by row: 12 s for 200k rows) nor one Arrow slice of the whole selection (a one-row slice object
    per row: 590 MiB for 1M rows) would do at scale."""
    import numpy as np

    from rlmed.data.mapped_pages import release_dataset_pages

    parts = []
    for batch in dataset.select_columns([name]).with_format("arrow").iter(batch_size=COLUMN_BATCH):
        parts.append(batch.column(0).to_numpy(zero_copy_only=False))
        release_dataset_pages(dataset)  # each record batch's column touched a block of pages (mapped_pages)
    return np.concatenate(parts) if parts else np.zeros(0)


def skip_trainer_preparation(config: Any) -> None:
    """Tell SFTTrainer the datasets are ready (see :func:`sft_truncation`), so it does not map over them again."""
    config.dataset_kwargs = {**(config.dataset_kwargs or {}), "skip_prepare_dataset": True}


# Part of the cache key of tokenised documents and of their blocks.
TEXT_IDS_VERSION = "pretrain-ids-1"


def tokenize_texts(tokenizer: Any, texts: Sequence[str], name: str, cache: DataCache | None = None) -> Any:
    """A Dataset with the `input_ids` of each text (no special tokens: packing adds EOS between documents).
    Prepared ArrowItems with a cache: a cached map with worker processes; a list: tokenised here."""
    from datasets import Dataset, Features, Sequence as Column, Value
    from tqdm import tqdm

    def ids(batch: list[str]) -> dict[str, list[list[int]]]:
        return {"input_ids": tokenizer(list(batch), add_special_tokens=False)["input_ids"]}

    if cache is not None and isinstance(texts, ArrowItems):
        return cached_map(cache, "tokens", texts, ids,
                          {"tokenizer": tokenizer_hash(tokenizer), "columns": TEXT_IDS_VERSION},
                          Features({"input_ids": Column(Value("int32"))}), desc=f"tokenising {name}")
    items = list(texts)
    found: list[list[int]] = []
    for start in tqdm(range(0, len(items), TOKENIZE_CHUNK), desc=f"tokenising {name}", unit="chunk",
                      disable=len(items) < 5000):
        found += ids(items[start:start + TOKENIZE_CHUNK])["input_ids"]
    return Dataset.from_dict({"input_ids": found})


def packed_blocks(tokens: Any, block_size: int, eos_id: int, cache: DataCache | None = None,
                  key: str | None = None) -> tuple[Any, Any]:
    """The documents of `tokens` (a Dataset of input_ids) joined with EOS and cut into `block_size` blocks
    (rlmed.data.packing): (a Dataset of `input_ids` blocks, the PackResult counts). With a cache and the
    tokens' `key`, the blocks are written to an Arrow file of the cache a batch at a time, so a corpus larger
    than memory packs; without, they are built in memory."""
    from datasets import Dataset

    from rlmed.data.packing import PackResult, iter_blocks, pack

    def documents() -> Any:
        for batch in tokens.iter(batch_size=TOKENIZE_CHUNK):
            yield from batch["input_ids"]

    if cache is None or key is None:
        packed = pack(list(documents()), block_size, eos_id)
        return Dataset.from_dict({"input_ids": packed.blocks}), packed

    def build(folder: Path) -> dict[str, Any]:
        import pyarrow as pa

        counts = PackResult()
        blocks = write_column(folder / "blocks.arrow", "input_ids", pa.list_(pa.int32()),
                              iter_blocks(documents(), block_size, eos_id, counts))
        return {"files": ["blocks.arrow"], "blocks": blocks, "num_docs": counts.num_docs,
                "num_tokens": counts.num_tokens, "dropped_tokens": counts.dropped_tokens}

    folder, record = cache.entry("blocks", {"tokens": key, "block_size": block_size, "eos_id": eos_id,
                                            "version": TEXT_IDS_VERSION}, build)
    counts = PackResult(num_docs=record["num_docs"], num_tokens=record["num_tokens"],
                        dropped_tokens=record["dropped_tokens"])
    return open_files(folder, record["files"]), counts
