"""Mix several data sources into one shuffled list, by natural size or by weight.

Weighted mixing is how recipes balance, say, a small curated medical set
against a large general corpus: the small source is repeated in whole passes
and the large one subsampled without replacement, so no row is duplicated
more than the requested proportion forces.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import math
import random
from array import array
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Generic, Sequence, TypeVar

logger = logging.getLogger(__name__)

__all__ = ["MixPlan", "MixResult", "mix", "plan_mix"]

T = TypeVar("T")


@dataclass
class MixResult(Generic[T]):
    """Mixed items, the source index of each item, and how many came from each source.

    When the rows came from data sources (rlmed.data.sources.load_sources), ``bad_rows`` counts the rows each
    source with ``on_bad_rows: skip`` dropped (by path) and ``bad_row_reasons`` keeps the first few
    ``file:line: reason`` messages, for the stage's manifest metrics.
    """

    items: list[T] = field(default_factory=list)
    source_ids: list[int] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    bad_rows: dict[str, int] = field(default_factory=dict)
    bad_row_reasons: list[str] = field(default_factory=list)


def _check_weights(weights: Sequence[float], n_sources: int) -> list[float]:
    if len(weights) != n_sources:
        raise ValueError(f"got {len(weights)} weights for {n_sources} sources; they must match")
    checked = []
    for i, w in enumerate(weights):
        try:
            value = float(w)
        except (TypeError, ValueError):
            raise ValueError(f"weight {i} must be a number, got {w!r}") from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"weight {i} must be a finite non-negative number, got {w!r}")
        checked.append(value)
    if not any(w > 0 for w in checked):
        raise ValueError("at least one weight must be positive")
    return checked


def _largest_remainder(total: int, weights: list[float]) -> list[int]:
    """Split ``total`` in proportion to ``weights`` into integers summing to ``total``.

    Exact fractions avoid float drift deciding who gets the leftover units;
    ties go to the lower source index so the split is reproducible.
    """
    exact = [Fraction(w) for w in weights]
    norm = sum(exact)
    quotas = [total * w / norm for w in exact]
    counts = [math.floor(q) for q in quotas]
    leftover = total - sum(counts)
    order = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[:leftover]:
        counts[i] += 1
    return counts


@dataclass
class MixPlan:
    """Which rows a mix takes, in order, as global indices into the sources laid end to end (source 0's rows
    first); `counts` per source. Computed from the sources' sizes alone, so rows held in Arrow files mix the
    same way as rows held in lists (rlmed.data.prepared)."""

    order: array  # of 64-bit ints: 8 bytes a row where a list of ints costs about 36, for corpora of millions
    counts: list[int]
    offsets: list[int]

    def source_of(self, index: int) -> tuple[int, int]:
        """(source, row within it) of a global index."""
        sid = bisect.bisect_right(self.offsets, index) - 1
        return sid, index - self.offsets[sid]

    def source_ids(self) -> array:
        """The source of each row of the mix, in order."""
        import numpy as np

        found = np.searchsorted(np.asarray(self.offsets[1:], dtype=np.int64),
                                np.frombuffer(self.order, dtype=np.int64), side="right")
        return array("i", found.astype(np.int32).tobytes())

    def digest(self) -> str:
        """A hash of the order, for cache keys."""
        return hashlib.sha256(self.order.tobytes()).hexdigest()


def plan_mix(sizes: Sequence[int], weights: Sequence[float] | None, seed: int,
             total: int | None = None) -> MixPlan:
    """The rows :func:`mix` takes from sources of these sizes, and their order."""
    if not sizes:
        raise ValueError("mix needs at least one source")
    sizes = list(sizes)
    if total is not None and (not isinstance(total, int) or total < 0):
        raise ValueError(f"total must be a non-negative integer, got {total!r}")

    if weights is None and total is None:
        counts = list(sizes)
    else:
        # No weights but a total: keep natural proportions, scaled to total.
        checked = _check_weights(weights if weights is not None else sizes, len(sizes))
        for i, (w, n) in enumerate(zip(checked, sizes)):
            if w > 0 and n == 0:
                raise ValueError(f"source {i} has positive weight {w} but no rows")
        counts = _largest_remainder(sum(sizes) if total is None else total, checked)

    offsets = [0]
    for size in sizes[:-1]:
        offsets.append(offsets[-1] + size)
    rng = random.Random(seed)
    # Plain ints, not (source, row) pairs: a shuffle's permutation depends only on the sequence's length, so the
    # order is the one pairs would get, at a fraction of the memory for millions of rows.
    order = array("q")
    for sid, (count, size) in enumerate(zip(counts, sizes)):
        passes, remainder = divmod(count, size) if size else (0, 0)
        base = offsets[sid]
        for _ in range(passes):
            order.extend(range(base, base + size))
        order.extend(base + idx for idx in rng.sample(range(size), remainder))
        if count > size:
            logger.info("source %d upsampled: %d rows -> %d", sid, size, count)
        elif count < size:
            logger.info("source %d subsampled: %d rows -> %d", sid, size, count)
    rng.shuffle(order)
    return MixPlan(order=order, counts=counts, offsets=offsets)


def mix(
    sources: Sequence[Sequence[T]],
    weights: Sequence[float] | None,
    seed: int,
    total: int | None = None,
) -> MixResult[T]:
    """Combine ``sources`` into one shuffled list.

    Without weights every row of every source appears exactly once. With
    weights, ``total`` (default: the sum of source sizes) is split by the
    largest-remainder method; each source fills its share with whole shuffled
    passes plus a random subset without replacement. Deterministic per seed.
    """
    plan = plan_mix([len(s) for s in sources], weights, seed, total)
    picks = [plan.source_of(index) for index in plan.order]
    return MixResult(
        items=[sources[sid][idx] for sid, idx in picks],
        source_ids=[sid for sid, _ in picks],
        counts=plan.counts,
    )
