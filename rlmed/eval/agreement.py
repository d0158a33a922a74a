"""Agreement between a judge and human raters, as pure functions: Cohen's kappa (plain or weighted), Spearman's
rank correlation with average ranks for ties, the position bias of a judge asked in both answer orders, and
bootstrap intervals for accuracy and kappa. `rlmed judge-check` (rlmed.eval.judge_check) reports them.

Conventions. A kappa or correlation that is undefined (no items, or a rater who always gives the same category,
so chance agreement is already perfect) is None, never 0: "no information" must not read as "no agreement".
Verdicts of a pairwise judge are positional: "a" means the answer shown first, "b" the one shown second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Hashable, Literal, Sequence

import numpy as np

from rlmed.eval.bootstrap import CONFIDENCE, RESAMPLES, percentiles, resample_counts

PAIR_LABELS = ("a", "b", "tie")
Weights = Literal["linear", "quadratic"] | None


def confusion(first: Sequence[Hashable], second: Sequence[Hashable], categories: Sequence[Hashable]) -> np.ndarray:
    """K × K counts: cell [i, j] = items the first rater put in categories[i] and the second in categories[j]."""
    if len(first) != len(second):
        raise ValueError(f"the raters rated different numbers of items: {len(first)} and {len(second)}")
    index = {c: i for i, c in enumerate(categories)}
    if len(index) != len(categories):
        raise ValueError(f"categories must be distinct, got {list(categories)}")
    matrix = np.zeros((len(categories), len(categories)), dtype=np.float64)
    for x, y in zip(first, second):
        if x not in index or y not in index:
            raise ValueError(f"rating {x if x not in index else y!r} is not one of the categories {list(categories)}")
        matrix[index[x], index[y]] += 1
    return matrix


def disagreement_weights(k: int, weights: Weights = None) -> np.ndarray:
    """K × K cost of putting an item in category j when the other rater chose i: 0 on the diagonal; 1 elsewhere
    (plain kappa), |i − j| / (K − 1) (linear) or ((i − j) / (K − 1))² (quadratic, for ordered scales)."""
    i, j = np.indices((k, k))
    if weights is None:
        return (i != j).astype(np.float64)
    if weights not in ("linear", "quadratic"):
        raise ValueError(f"weights must be None, 'linear' or 'quadratic', got {weights!r}")
    distance = np.abs(i - j) / max(k - 1, 1)
    return distance if weights == "linear" else distance**2


def kappa_from_confusion(matrix: np.ndarray, weights: Weights = None) -> np.ndarray | float:
    """Cohen's kappa of a K × K confusion matrix, or of a stack of them (..., K, K) at once (the bootstrap's
    draws): 1 − Σ w·observed / Σ w·expected, expected = row total × column total / N. With the plain weights
    this is (p_o − p_e) / (1 − p_e). NaN where it is undefined (no items, or Σ w·expected = 0)."""
    m = np.asarray(matrix, dtype=np.float64)
    w = disagreement_weights(m.shape[-1], weights)
    total = m.sum(axis=(-2, -1))
    rows, cols = m.sum(axis=-1), m.sum(axis=-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = rows[..., :, None] * cols[..., None, :] / total[..., None, None]
        observed_cost = (w * m).sum(axis=(-2, -1))
        expected_cost = (w * expected).sum(axis=(-2, -1))
        kappa = np.where((total > 0) & (expected_cost > 0), 1.0 - observed_cost / expected_cost, np.nan)
    return float(kappa) if kappa.ndim == 0 else kappa


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def cohen_kappa(first: Sequence[Hashable], second: Sequence[Hashable], categories: Sequence[Hashable],
                weights: Weights = None) -> float | None:
    """Cohen's kappa of two raters over `categories` (ordered from low to high when weighted); None when undefined.
    Categories nobody used still count for the weights (a 1..10 scale stays 1..10)."""
    return _finite(kappa_from_confusion(confusion(first, second, categories), weights))


def weighted_kappa(first: Sequence[Hashable], second: Sequence[Hashable],
                   categories: Sequence[Hashable]) -> float | None:
    """Quadratic-weighted kappa (ordered categories): a near miss on a score scale costs less than a far one."""
    return cohen_kappa(first, second, categories, "quadratic")


def accuracy(predicted: Sequence[Hashable], gold: Sequence[Hashable]) -> float | None:
    """Share of items where the two agree exactly; None for no items."""
    if len(predicted) != len(gold):
        raise ValueError(f"different numbers of items: {len(predicted)} and {len(gold)}")
    return sum(p == g for p, g in zip(predicted, gold)) / len(gold) if gold else None


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of the ranks they span ([10, 20, 20, 30] → [1, 2.5, 2.5, 4])."""
    x = np.asarray(values, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    start = 0
    while start < len(x):
        end = start
        while end + 1 < len(x) and sorted_x[end + 1] == sorted_x[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho: the Pearson correlation of the average ranks (the tie-correct form, not 1 − 6Σd²/…, which
    assumes no ties). None for fewer than 2 items or when either side is constant (no order to agree with)."""
    if len(x) != len(y):
        raise ValueError(f"different numbers of items: {len(x)} and {len(y)}")
    if len(x) < 2:
        return None
    rx, ry = average_ranks(x), average_ranks(y)
    dx, dy = rx - rx.mean(), ry - ry.mean()
    denominator = math.sqrt(float((dx * dx).sum()) * float((dy * dy).sum()))
    if denominator == 0:
        return None
    return max(-1.0, min(1.0, float((dx * dy).sum()) / denominator))


@dataclass(frozen=True)
class PositionBias:
    """A pairwise judge asked about each pair twice, answers swapped. Per pair (both orders answered):
    first / second: it picked the same position both times (first shown, second shown) — a verdict about the slot,
    not the answer; consistent: it picked the same answer both times, or tied both times; partial: one order
    decided, the other tied. first + second + consistent + partial = n. unscored: pairs missing a verdict."""

    n: int
    first: int
    second: int
    consistent: int
    partial: int
    unscored: int

    @property
    def rate(self) -> float | None:
        """Share of pairs whose verdict followed the position: (first + second) / n."""
        return (self.first + self.second) / self.n if self.n else None

    @property
    def consistency(self) -> float | None:
        return self.consistent / self.n if self.n else None

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, "first": self.first, "second": self.second, "consistent": self.consistent,
                "partial": self.partial, "unscored": self.unscored, "rate": self.rate,
                "consistency": self.consistency}


def position_bias(shown_in_order: Sequence[str | None], shown_swapped: Sequence[str | None]) -> PositionBias:
    """Position bias from the positional verdicts ("a" = first shown, "b" = second, "tie", None = no verdict) of
    each pair asked in order (X, Y) and then (Y, X). ("a", "a") or ("b", "b"): the same slot won with the answers
    swapped, so the slot decided; ("a", "b"), ("b", "a"), ("tie", "tie"): consistent."""
    if len(shown_in_order) != len(shown_swapped):
        raise ValueError(f"different numbers of pairs: {len(shown_in_order)} and {len(shown_swapped)}")
    counts = {"first": 0, "second": 0, "consistent": 0, "partial": 0, "unscored": 0}
    for v1, v2 in zip(shown_in_order, shown_swapped):
        if v1 is None or v2 is None:
            counts["unscored"] += 1
            continue
        if v1 not in PAIR_LABELS or v2 not in PAIR_LABELS:
            raise ValueError(f"verdicts must be 'a', 'b', 'tie' or None, got {v1!r}, {v2!r}")
        if v1 == v2 == "a":
            counts["first"] += 1
        elif v1 == v2 == "b":
            counts["second"] += 1
        elif v1 == v2 or {v1, v2} == {"a", "b"}:
            counts["consistent"] += 1
        else:
            counts["partial"] += 1
    n = len(shown_in_order) - counts["unscored"]
    return PositionBias(n=n, **counts)


def bootstrap_agreement(human: Sequence[Hashable], judge: Sequence[Hashable], clusters: Sequence[Hashable],
                        categories: Sequence[Hashable], seed: int, key: Sequence[str] = ("agreement",),
                        resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                        weights: Weights = None) -> dict[str, tuple[float | None, float | None]]:
    """Percentile bootstrap intervals of accuracy and Cohen's kappa of (human, judge) ratings.

    The resampled unit is the cluster (e.g. the pair that several annotators labelled): items of one cluster share
    the judge's verdict and are not independent, so they are drawn together. Draws come from
    rlmed.eval.bootstrap.resample_counts (seeded by `seed` and `key`, reproducible), each draw as counts, so a
    draw's confusion matrix is one matrix product. Returns {"accuracy": (low, high), "kappa": (low, high)};
    (None, None) without items or when no draw defines the statistic."""
    if not len(human) == len(judge) == len(clusters):
        raise ValueError("human, judge and clusters must have one entry per item")
    if not human:
        return {"accuracy": (None, None), "kappa": (None, None)}
    k = len(categories)
    index = {c: i for i, c in enumerate(categories)}
    cluster_ids: dict[Hashable, int] = {}
    of_item = np.array([cluster_ids.setdefault(c, len(cluster_ids)) for c in clusters], dtype=np.int64)
    cells = np.zeros((len(human), k * k), dtype=np.float64)  # one-hot of each item's confusion cell
    for row, (h, j) in enumerate(zip(human, judge)):
        cells[row, index[h] * k + index[j]] = 1.0
    diagonal = [i * k + i for i in range(k)]
    accuracies, kappas = [], []
    for counts in resample_counts(len(cluster_ids), resamples, seed, *key):
        matrices = (counts[:, of_item] @ cells).reshape(-1, k, k)
        totals = matrices.sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            accuracies.append(matrices.reshape(-1, k * k)[:, diagonal].sum(axis=1) / totals)
        kappas.append(kappa_from_confusion(matrices, weights))

    def interval(draws: list[np.ndarray]) -> tuple[float | None, float | None]:
        values = np.concatenate(draws)
        if not np.isfinite(values).any():
            return None, None
        low, high = percentiles(values, confidence)
        return _finite(low), _finite(high)

    return {"accuracy": interval(accuracies), "kappa": interval(kappas)}


__all__ = ["PAIR_LABELS", "PositionBias", "accuracy", "average_ranks", "bootstrap_agreement", "cohen_kappa",
           "confusion", "disagreement_weights", "kappa_from_confusion", "position_bias", "spearman",
           "weighted_kappa"]
