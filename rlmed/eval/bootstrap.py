"""Telling a gain from noise (methods.md §10): the paired bootstrap and the Wilson interval, as numpy arithmetic.

Paired bootstrap: two models answered the same eval rows, so their per-row values form pairs. A resample draws n
row indices with replacement; the statistic (a mean of per-row values, or a corpus-level Distinct-n recomputed
on the drawn rows) is taken for both models on the same draw, and the 2.5th and 97.5th percentiles of the
differences over `resamples` draws are the 95% interval (for Distinct-n moved by the resampling's bias, see
corpus_interval). A draw is held as counts (how often each row was drawn,
b × n), so every mean over every metric and model pair is one matrix product per chunk of draws.

Draws depend only on (seed, key, n): every comparison on one eval set (or one breakdown group) sees the same
draws, and `rlmed report --recompute` reproduces the evaluate stage's intervals exactly. Nothing here knows about
rlmed's files; rlmed.eval.comparisons feeds it per-row vectors.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
CONFIDENCE = 0.95
# Below this many paired rows a percentile interval is too coarse to call (two rows give at most three distinct
# means): the interval is still reported, the verdict is not.
MIN_ROWS = 10
BETTER, WORSE, UNCLEAR, TOO_FEW = "better", "worse", "no clear change", "too few rows"
# Count-matrix cells per chunk of draws: bounds memory (8 bytes a cell) whatever the eval set's size.
_CHUNK_CELLS = 2_000_000
_Z95 = 1.959963984540054  # the standard normal's 97.5th percentile
# Name parts that mean a smaller value is better (perplexity, error rates); everything else: larger is better.
LOWER_IS_BETTER = {"loss", "perplexity", "ppl", "error", "errors", "ter", "wer", "cer", "latency", "runtime",
                   "failed", "unscored", "wrong", "unanswerable"}  # the last two: shares of choice rows


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of `metric` ("<set>/<name>") is the better one: its name has a LOWER_IS_BETTER
    part (eval_loss, perplexity, error_rate...); everything else (BLEU, accuracy, reward) is higher-is-better."""
    leaf = metric.rsplit("/", 1)[-1].lower()
    return any(part in LOWER_IS_BETTER for part in re.split(r"[^a-z0-9]+", leaf))


def rng_for(seed: int, *key: str) -> np.random.Generator:
    """A generator seeded from the stage's seed and names (eval set, breakdown field and value), stable across
    processes (Python's hash() of a str is salted per process, so it cannot be used)."""
    digest = hashlib.sha256("\x1f".join(key).encode("utf-8")).digest()
    words = [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]
    return np.random.default_rng([int(seed) % 2**63, *words])


def resample_counts(n: int, resamples: int, seed: int, *key: str) -> Iterator[np.ndarray]:
    """Chunks (b × n, float64) of how many times each of n rows was drawn, `resamples` rows in all.

    The chunk size depends only on n, so the same (seed, key, n) always gives the same draws."""
    if n < 1:
        raise ValueError("resampling needs at least one row")
    rng = rng_for(seed, *key)
    chunk = max(1, min(resamples, _CHUNK_CELLS // n))
    done = 0
    while done < resamples:
        b = min(chunk, resamples - done)
        idx = rng.integers(0, n, size=(b, n))
        flat = (np.arange(b)[:, None] * n + idx).ravel()
        yield np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)
        done += b


class Distinct:
    """Corpus Distinct-n (unique n-grams / all n-grams ×100, never across two answers) of token lists, ready to
    be recomputed on any resample: a drawn row adds all its n-grams to the total every time it is drawn, but
    its n-grams count once among the unique ones.

    Unique n-grams of a draw = n-grams that some drawn row contains. Most n-grams occur in one row only; those
    are counted per row (a matrix-vector product), the rest by an OR over the rows that contain each.
    """

    def __init__(self, tokens: Sequence[Sequence[str]], order: int) -> None:
        if order < 1:
            raise ValueError(f"Distinct order must be >= 1, got {order}")
        ids: dict[tuple[str, ...], int] = {}
        rows_of: list[list[int]] = []
        self.totals = np.zeros(len(tokens), dtype=np.float64)  # n-grams per row, repeats included
        for row, toks in enumerate(tokens):
            grams = [tuple(toks[i:i + order]) for i in range(len(toks) - order + 1)]
            self.totals[row] = len(grams)
            for gram in dict.fromkeys(grams):
                gid = ids.setdefault(gram, len(ids))
                if gid == len(rows_of):
                    rows_of.append([])
                rows_of[gid].append(row)
        self.singles = np.zeros(len(tokens), dtype=np.float64)  # n-grams only this row has
        shared = [rows for rows in rows_of if len(rows) > 1]
        for rows in rows_of:
            if len(rows) == 1:
                self.singles[rows[0]] += 1
        self.shared_rows = np.array([r for rows in shared for r in rows], dtype=np.int64)
        self.shared_starts = np.cumsum([0, *(len(rows) for rows in shared[:-1])]).astype(np.int64)
        self.unique = len(rows_of)

    def value(self) -> float:
        """Distinct-n ×100 over every row once (what text_metrics.distinct gives)."""
        total = self.totals.sum()
        return 100.0 * self.unique / total if total else 0.0

    def resampled(self, counts: np.ndarray) -> np.ndarray:
        """Distinct-n ×100 of each draw in `counts` (b × n); 0 where a draw has no n-gram."""
        drawn = counts > 0
        unique = drawn.astype(np.float64) @ self.singles
        if len(self.shared_rows):
            # Draws packed 8 to a byte (n × b/8), so OR-ing the rows of every shared n-gram moves an eighth of
            # the memory a bool gather would; sub-chunks of draws keep the gather near _CHUNK_CELLS bytes.
            step = max(8, (8 * _CHUNK_CELLS // len(self.shared_rows)) // 8 * 8)
            for start in range(0, len(drawn), step):
                part = drawn[start:start + step]
                bits = np.packbits(part.T, axis=1)
                present = np.bitwise_or.reduceat(bits[self.shared_rows], self.shared_starts, axis=0)
                unique[start:start + step] += np.unpackbits(present, axis=1, count=len(part)).sum(axis=0)
        total = counts @ self.totals
        return np.divide(100.0 * unique, total, out=np.zeros_like(unique), where=total > 0)


@dataclass
class Interval:
    """The paired difference a − b: point estimate, percentile interval, pairs used (n)."""

    diff: float | None
    low: float | None
    high: float | None
    n: int


def percentiles(diffs: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The central `confidence` interval of resampled differences (NaN draws, with no usable row, left out)."""
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.nanpercentile(diffs, [tail, 100.0 - tail])
    return float(low), float(high)


def paired_means(a: Sequence[np.ndarray], b: Sequence[np.ndarray], seed: int, key: Sequence[str],
                 resamples: int = RESAMPLES, distinct: Sequence[tuple[Distinct, Distinct]] = (),
                 confidence: float = CONFIDENCE) -> tuple[list[Interval], list[Interval]]:
    """Paired bootstrap intervals of mean(a_j) − mean(b_j) for every pair j of per-row vectors (all of one
    eval set's n rows, in the same row order; NaN = no value, and a pair uses the rows where both have one),
    and of Distinct(a) − Distinct(b) for every pair in `distinct` — all on the same draws (seed, key)."""
    n = len(a[0]) if a else (len(distinct[0][0].totals) if distinct else 0)
    if n == 0:
        return [Interval(None, None, None, 0) for _ in a], [Interval(None, None, None, 0) for _ in distinct]
    av, bv = np.column_stack(a) if a else np.zeros((n, 0)), np.column_stack(b) if b else np.zeros((n, 0))
    mask = ~np.isnan(av) & ~np.isnan(bv)
    d = np.where(mask, av - bv, 0.0)
    m = mask.astype(np.float64)
    mean_draws, distinct_draws = [], []
    for counts in resample_counts(n, resamples, seed, *key):
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_draws.append((counts @ d) / (counts @ m))  # 0/0 (no usable row drawn) -> NaN, left out
        distinct_draws.append(np.column_stack([x.resampled(counts) - y.resampled(counts) for x, y in distinct])
                              if distinct else np.zeros((len(counts), 0)))
    means, corpus = np.vstack(mean_draws), np.vstack(distinct_draws)
    out = []
    for j in range(d.shape[1]):
        used = int(mask[:, j].sum())
        if not used:
            out.append(Interval(None, None, None, 0))
            continue
        diff = float(d[mask[:, j], j].mean())  # the mean paired difference, as each draw takes it
        out.append(Interval(diff, *percentiles(means[:, j], confidence), used))
    corpus_out = [corpus_interval(x.value() - y.value(), corpus[:, j], confidence, n)
                  for j, (x, y) in enumerate(distinct)]
    return out, corpus_out


def corpus_interval(diff: float, draws: np.ndarray, confidence: float, n: int) -> Interval:
    """The percentile interval of a corpus-level difference, moved by the bootstrap's bias.

    A draw with replacement repeats rows, and a repeated row adds n-grams to the total but none to the unique
    ones, so resampled Distinct-n falls below the full set's, the more so the more diverse the answers: for a
    model whose every answer is new and one that repeats itself, the difference of 94 got the interval
    [50, 66]. Moving the percentiles by (point estimate − mean of the draws) keeps their spread and centres
    them on what was measured."""
    bias = float(np.nanmean(draws)) - diff
    low, high = percentiles(draws, confidence)
    return Interval(diff, low - bias, high - bias, n)


def verdict(low: float | None, high: float | None, lower_is_better: bool, n: int,
            min_rows: int = MIN_ROWS) -> str:
    """better / worse when the interval excludes 0 on that side (a fall is better where lower is better),
    "no clear change" when it holds 0, "too few rows" below `min_rows` pairs or without an interval."""
    if low is None or high is None or n < min_rows:
        return TOO_FEW
    if low > 0:
        return WORSE if lower_is_better else BETTER
    if high < 0:
        return BETTER if lower_is_better else WORSE
    return UNCLEAR


def entry(interval: Interval, lower_is_better: bool, min_rows: int = MIN_ROWS) -> dict[str, object]:
    """An interval as results.json keeps it: diff, low, high, n, significant, verdict, lower_is_better."""
    def finite(value: float | None) -> float | None:  # JSON has no NaN; a missing number is null
        return value if value is not None and math.isfinite(value) else None

    low, high = finite(interval.low), finite(interval.high)
    said = verdict(low, high, lower_is_better, interval.n, min_rows)
    return {"diff": finite(interval.diff), "low": low, "high": high, "n": interval.n,
            "significant": said in (BETTER, WORSE), "verdict": said, "lower_is_better": lower_is_better}


def wilson(successes: int, n: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% by default): better than p ± z·se at small n and near 0 or 1,
    and never outside [0, 1]."""
    if n <= 0:
        raise ValueError("a proportion needs n >= 1")
    if not 0 <= successes <= n:
        raise ValueError(f"successes {successes} outside 0..{n}")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)
