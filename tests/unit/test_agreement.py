"""rlmed.eval.agreement against values worked out by hand (each test's comment shows the arithmetic)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlmed.eval.agreement import (PAIR_LABELS, accuracy, average_ranks, bootstrap_agreement, cohen_kappa, confusion,
                                  kappa_from_confusion, position_bias, spearman, weighted_kappa)


def ratings(table: list[list[int]], categories) -> tuple[list, list]:
    """Two raters' item lists that produce `table` (rows: first rater, columns: second)."""
    first, second = [], []
    for i, row in enumerate(table):
        for j, count in enumerate(row):
            first += [categories[i]] * count
            second += [categories[j]] * count
    return first, second


def test_kappa_of_the_textbook_two_by_two_table():
    # 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15. p_o = 35/50 = 0.7. Rater 1 says yes 25/50, rater 2
    # 30/50: p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5. kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4.
    first, second = ratings([[20, 5], [10, 15]], ["yes", "no"])
    assert confusion(first, second, ["yes", "no"]).tolist() == [[20, 5], [10, 15]]
    assert cohen_kappa(first, second, ["yes", "no"]) == pytest.approx(0.4)
    assert accuracy(second, first) == pytest.approx(0.7)


THREE = [[10, 2, 0], [1, 8, 1], [2, 1, 5]]  # N = 30; rows 12, 10, 8; columns 13, 11, 6


def test_kappa_of_a_three_by_three_table():
    # p_o = (10 + 8 + 5) / 30 = 23/30 = 690/900. p_e = (12*13 + 10*11 + 8*6) / 900 = 314/900.
    # kappa = (690 - 314) / (900 - 314) = 376/586 = 188/293.
    first, second = ratings(THREE, PAIR_LABELS)
    assert cohen_kappa(first, second, PAIR_LABELS) == pytest.approx(188 / 293)


def test_quadratic_weighted_kappa_of_the_same_table():
    # Ordered categories 1, 2, 3; weights ((i - j) / 2)^2: 0.25 one step apart, 1 two steps apart.
    # Observed cost: 0.25 * (2 + 1 + 1 + 1) + 1 * (0 + 2) = 3.25.
    # Expected cells r_i * c_j / 30; cost: 0.25 * (12*11 + 10*13 + 10*6 + 8*11) / 30 + 1 * (12*6 + 8*13) / 30
    #   = (0.25 * 410 + 176) / 30 = 278.5 / 30. kappa_w = 1 - 3.25 / (278.5 / 30) = 1 - 97.5 / 278.5 = 181/278.5.
    first, second = ratings(THREE, [1, 2, 3])
    assert weighted_kappa(first, second, [1, 2, 3]) == pytest.approx(181 / 278.5)
    # Linear weights (|i - j| / 2): observed 0.5 * 5 + 1 * 2 = 4.5; expected (0.5 * 410 + 176) / 30 = 381 / 30.
    assert cohen_kappa(first, second, [1, 2, 3], "linear") == pytest.approx(1 - 4.5 * 30 / 381)


def test_unused_categories_of_the_scale_still_shape_the_weights():
    # Raters use only 1 and 10 of a 1..10 scale: one disagreement (1 vs 10) costs the full weight 1, the same
    # as with a {1, 10} scale, so the kappa equals that of the 2x2 table [[1, 1], [0, 2]]:
    # p_o = 3/4, p_e = (2*1 + 2*3) / 16 = 1/2, kappa = (3/4 - 1/2) / (1/2) = 0.5.
    human, judge = [1, 1, 10, 10], [1, 10, 10, 10]
    assert weighted_kappa(human, judge, range(1, 11)) == pytest.approx(0.5)
    # A near miss (9 for 10) on the same scale costs (1/9)^2 of a far one: the kappa stays near 1.
    assert weighted_kappa([1, 1, 10, 10], [1, 1, 9, 10], range(1, 11)) > 0.99


def test_perfect_and_undefined_kappas():
    assert cohen_kappa(["a", "b", "tie"], ["a", "b", "tie"], PAIR_LABELS) == pytest.approx(1.0)
    assert cohen_kappa(["a", "a"], ["a", "a"], PAIR_LABELS) is None  # one category only: p_e = 1, undefined
    assert cohen_kappa([], [], PAIR_LABELS) is None
    with pytest.raises(ValueError, match="not one of the categories"):
        cohen_kappa(["a"], ["c"], PAIR_LABELS)


def test_kappa_of_a_stack_of_tables_is_each_tables_kappa():
    stack = np.array([THREE, [[20, 5, 0], [10, 15, 0], [0, 0, 0]], np.zeros((3, 3))], dtype=float)
    got = kappa_from_confusion(stack)
    assert got[0] == pytest.approx(188 / 293) and got[1] == pytest.approx(0.4) and math.isnan(got[2])


def test_average_ranks_share_the_mean_rank_of_ties():
    assert average_ranks([10, 20, 20, 30]).tolist() == [1.0, 2.5, 2.5, 4.0]
    assert average_ranks([3, 3, 3]).tolist() == [2.0, 2.0, 2.0]
    assert average_ranks([5, 1, 5, 0]).tolist() == [3.5, 2.0, 3.5, 1.0]


def test_spearman_with_ties_uses_average_ranks():
    # x = [1, 2, 2, 3] -> ranks [1, 2.5, 2.5, 4]; y = [1, 3, 2, 4] -> ranks [1, 3, 2, 4]; both mean 2.5.
    # Deviations dx = [-1.5, 0, 0, 1.5], dy = [-1.5, 0.5, -0.5, 1.5]: Σdxdy = 4.5, Σdx² = 4.5, Σdy² = 5.
    # rho = 4.5 / sqrt(4.5 * 5) = sqrt(0.9).
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(math.sqrt(0.9))
    # The no-ties shortcut 1 - 6Σd²/(n(n²-1)) would give 1 - 6*0.5/60 = 0.95 here: not what is computed.
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) != pytest.approx(0.95)


def test_spearman_of_monotone_reversed_and_degenerate_series():
    assert spearman([1, 2, 3, 4], [0.1, 0.5, 0.6, 0.9]) == pytest.approx(1.0)  # any monotone map: 1
    assert spearman([1, 2, 3, 4], [9, 7, 3, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [5, 5, 5]) is None  # a constant side has no order
    assert spearman([1], [2]) is None
    with pytest.raises(ValueError):
        spearman([1, 2], [1])


def test_position_bias_counts_pairs_won_by_the_same_slot():
    # Pair verdicts (order X,Y ; order Y,X): (a, a) first slot, (b, b) second slot, (a, b) and (b, a) the same
    # answer both times, (tie, tie) consistent, (a, tie) partial, (None, b) unscored.
    in_order = ["a", "b", "a", "b", "tie", "a", None, "a"]
    swapped = ["a", "b", "b", "a", "tie", "tie", "b", "a"]
    bias = position_bias(in_order, swapped)
    assert (bias.n, bias.first, bias.second, bias.consistent, bias.partial, bias.unscored) == (7, 2, 1, 3, 1, 1)
    assert bias.rate == pytest.approx(3 / 7) and bias.consistency == pytest.approx(3 / 7)
    always_first = position_bias(["a"] * 5, ["a"] * 5)
    assert always_first.rate == 1.0 and always_first.first == 5 and always_first.consistency == 0.0
    assert position_bias([None], [None]).rate is None


def test_bootstrap_intervals_hold_the_estimate_and_collapse_when_every_draw_agrees():
    human = ["a", "b", "tie", "a", "b", "a", "b", "tie", "a", "b"]
    judge = ["a", "b", "tie", "b", "b", "a", "tie", "tie", "a", "b"]
    bounds = bootstrap_agreement(human, judge, list(range(10)), PAIR_LABELS, seed=1, resamples=500)
    low, high = bounds["accuracy"]
    assert low <= accuracy(judge, human) <= high and 0 <= low < high <= 1
    k_low, k_high = bounds["kappa"]
    assert k_low <= cohen_kappa(human, judge, PAIR_LABELS) <= k_high
    assert bounds == bootstrap_agreement(human, judge, list(range(10)), PAIR_LABELS, seed=1, resamples=500)
    perfect = bootstrap_agreement(human, human, list(range(10)), PAIR_LABELS, seed=1, resamples=200)
    assert perfect["accuracy"] == (1.0, 1.0)
    # Items of one cluster are drawn together: with one cluster every draw is the whole set.
    one = bootstrap_agreement(human, judge, [0] * 10, PAIR_LABELS, seed=1, resamples=50)
    assert one["accuracy"] == pytest.approx((0.8, 0.8))
    assert bootstrap_agreement([], [], [], PAIR_LABELS, seed=1) == {"accuracy": (None, None), "kappa": (None, None)}
