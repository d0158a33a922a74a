"""Pack tokenised documents into fixed-size blocks for pretraining.

Documents are joined into one stream with an EOS token at every boundary and
cut into equal blocks, so no compute is spent on padding; a document may span
two blocks, which is the standard trade-off for causal LM pretraining.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

from tqdm import tqdm

from rlmed.data.records import progress_disabled

logger = logging.getLogger(__name__)

__all__ = ["PackResult", "iter_blocks", "pack"]


@dataclass
class PackResult:
    """Packed blocks plus bookkeeping.

    ``num_tokens`` counts the whole stream (added EOS included, dropped tail
    included); ``dropped_tokens`` is the part of it not in any block.
    """

    blocks: list[list[int]] = field(default_factory=list)
    num_docs: int = 0
    num_tokens: int = 0
    dropped_tokens: int = 0


def iter_blocks(docs: Iterable[Sequence[int]], block_size: int, eos_id: int, result: PackResult,
                drop_last: bool = True) -> Iterator[list[int]]:
    """The blocks of :func:`pack`, one at a time as the documents stream in (`result` gets the counts but no
    blocks), so a corpus larger than memory packs into a file block by block."""
    if not isinstance(block_size, int) or block_size < 2:
        raise ValueError(f"block_size must be an integer >= 2, got {block_size!r}")
    buffer: list[int] = []
    for doc in docs:
        tokens = list(doc)
        if not tokens:
            continue
        if tokens[-1] != eos_id:
            tokens.append(eos_id)
        result.num_docs += 1
        result.num_tokens += len(tokens)
        buffer.extend(tokens)
        if len(buffer) >= block_size:
            # Cut by offset and trim once, so a huge document stays linear-time.
            full = len(buffer) - len(buffer) % block_size
            yield from (buffer[i:i + block_size] for i in range(0, full, block_size))
            buffer = buffer[full:]
    if buffer:
        if drop_last:
            result.dropped_tokens = len(buffer)
        else:
            yield buffer
    logger.info("packed %d docs (%d tokens) into blocks of %d; dropped %d tokens",
                result.num_docs, result.num_tokens, block_size, result.dropped_tokens)


def pack(
    docs: Iterable[Sequence[int]], block_size: int, eos_id: int, drop_last: bool = True
) -> PackResult:
    """Concatenate ``docs`` (EOS-terminated) and cut the stream into ``block_size`` blocks.

    Empty documents are skipped and a document already ending in ``eos_id``
    gets no second one. The final partial block is dropped (and counted in
    ``dropped_tokens``) when ``drop_last``, else kept shorter.
    """
    try:
        n_docs: int | None = len(docs)  # type: ignore[arg-type]
    except TypeError:
        n_docs = None
    result = PackResult()
    progress = tqdm(docs, desc="packing", unit="doc", total=n_docs, disable=progress_disabled(n_docs))
    result.blocks = list(iter_blocks(progress, block_size, eos_id, result, drop_last))
    return result
