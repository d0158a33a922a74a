"""The paired bootstrap and the Wilson interval (methods.md §10): arithmetic, verdicts, direction, seeding."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlmed.eval.bootstrap import (BETTER, TOO_FEW, UNCLEAR, WORSE, Distinct, entry, lower_is_better, paired_means,
                                  resample_counts, verdict, wilson)
from rlmed.eval.text_metrics import distinct


def one(a, b, seed=7, key=("set",), resamples=2000):
    (interval,), _ = paired_means([np.asarray(a, float)], [np.asarray(b, float)], seed, key, resamples)
    return interval


def test_a_constant_shift_gives_that_shift_as_difference_and_both_ends():
    base = np.arange(30, dtype=float) % 7  # whole numbers: every resampled mean difference is exactly 4
    shifted = one(base + 4.0, base)
    assert (shifted.diff, shifted.low, shifted.high, shifted.n) == (4.0, 4.0, 4.0, 30)
    assert entry(shifted, lower_is_better=False)["verdict"] == BETTER
    down = one(base - 0.3, base)  # not representable exactly: equal up to rounding
    assert down.diff == pytest.approx(-0.3) and down.low == pytest.approx(-0.3) and down.high == pytest.approx(-0.3)
    assert entry(down, lower_is_better=False)["verdict"] == WORSE


def test_identical_models_give_zero_and_no_clear_change():
    values = np.random.default_rng(0).normal(size=50)
    same = one(values, values)
    assert (same.diff, same.low, same.high) == (0.0, 0.0, 0.0)
    e = entry(same, lower_is_better=False)
    assert e["verdict"] == UNCLEAR and e["significant"] is False


def test_a_clearly_better_model_on_enough_rows_is_better_and_noise_is_not():
    rng = np.random.default_rng(1)
    base = rng.normal(50, 10, size=300)
    better = base + rng.normal(3, 4, size=300)  # +3 on average, paired noise of 4: the interval sits above 0
    e = entry(one(better, base), lower_is_better=False)
    assert e["verdict"] == BETTER and e["significant"] and 0 < e["low"] < 3 < e["high"]
    noise = base + rng.normal(0, 4, size=300)  # no real change
    assert entry(one(noise, base), lower_is_better=False)["verdict"] == UNCLEAR


def test_the_seed_makes_the_draws_reproducible():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=40), rng.normal(size=40)
    assert one(a, b, seed=3) == one(a, b, seed=3)
    assert one(a, b, seed=3) != one(a, b, seed=4)
    assert one(a, b, key=("dialogues",)) != one(a, b, key=("mcq",))  # each set its own draws
    first = np.vstack(list(resample_counts(40, 100, 3, "x")))
    assert np.array_equal(first, np.vstack(list(resample_counts(40, 100, 3, "x"))))
    assert first.shape == (100, 40) and (first.sum(axis=1) == 40).all()  # each draw is n rows


def test_direction_lower_is_better_turns_a_fall_into_better():
    assert lower_is_better("dialogues/perplexity") and lower_is_better("eval_loss")
    assert not lower_is_better("mcq/accuracy") and not lower_is_better("dialogues/reward.rules.forbidden")
    base = np.arange(20, dtype=float)
    fall = one(base - 2.0, base)
    assert entry(fall, lower_is_better=True)["verdict"] == BETTER
    assert entry(fall, lower_is_better=False)["verdict"] == WORSE
    assert entry(one(base + 2.0, base), lower_is_better=True)["verdict"] == WORSE


def test_too_few_rows_get_an_interval_but_no_verdict():
    base = np.arange(5, dtype=float)
    e = entry(one(base + 4.0, base), lower_is_better=False)
    assert e["low"] == 4.0 and e["n"] == 5 and e["verdict"] == TOO_FEW and e["significant"] is False
    assert verdict(None, None, False, 100) == TOO_FEW


def test_missing_values_pair_only_the_rows_both_models_have():
    a = np.array([1.0, 2.0, math.nan, 4.0] * 5)
    b = np.array([0.0, math.nan, 3.0, 3.0] * 5)
    found = one(a, b)
    assert found.n == 10 and found.diff == 1.0 and found.low == found.high == 1.0  # rows 0 and 3 of each four


def test_wilson_matches_hand_computed_intervals():
    # p = 7/10, z = 1.96: centre (0.7 + 1.9208/10) / 1.38416 = 0.64449; half 1.41602 * sqrt(0.021 + 0.009604)
    low, high = wilson(7, 10)
    assert low == pytest.approx(0.3968, abs=1e-4) and high == pytest.approx(0.8922, abs=1e-4)
    low, high = wilson(50, 100)  # symmetric around 0.5: half = 1.96 / 1.038416 * sqrt(0.0025 + 0.00009604)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    low, high = wilson(0, 10)  # never below 0, unlike p ± z·se
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    with pytest.raises(ValueError):
        wilson(3, 0)


def test_distinct_is_recomputed_on_each_resample():
    tokens = [["发烧", "多", "喝水"], ["多", "喝水", "就医"], ["观察"], [], ["发烧", "发烧", "发烧"]]
    counts = np.vstack([np.ones(5), [2, 0, 3, 0, 0], [0, 0, 0, 4, 0], [0, 1, 0, 0, 4]])
    for order in (1, 2):
        d = Distinct(tokens, order)
        assert d.value() == distinct(tokens, order)
        # A drawn row's n-grams count every time it is drawn in the total, once among the unique ones.
        expected = [distinct([t for t, k in zip(tokens, row) for _ in range(int(k))], order) for row in counts]
        assert d.resampled(counts) == pytest.approx(expected)
    # Identical answers differ by exactly 0 on every draw; more varied answers score a higher Distinct.
    repeat = [["多", "喝水"]] * 12
    varied = [[f"词{i}", f"字{i}"] for i in range(12)]
    _, (same,) = paired_means([], [], 1, ("d",), distinct=[(Distinct(repeat, 1), Distinct(repeat, 1))])
    assert (same.diff, same.low, same.high, same.n) == (0.0, 0.0, 0.0, 12)
    _, (gain,) = paired_means([], [], 1, ("d",), distinct=[(Distinct(varied, 1), Distinct(repeat, 1))])
    assert gain.diff == pytest.approx(100 - 100 * 2 / 24) and gain.low > 0


def test_a_distinct_interval_holds_its_own_point_estimate():
    # Resampling repeats rows, and a repeated row's n-grams are never new: an answer set whose every answer is
    # new loses most Distinct on a draw, a repetitive one little, so the raw percentiles of the difference sat
    # far below it (94 against [50, 66]) before the interval was moved by the bootstrap's bias.
    rng = np.random.default_rng(0)
    fresh = [[f"新{r}_{i}" for i in range(10)] for r in range(50)]
    worn = [[f"旧{rng.integers(0, 30)}" for _ in range(10)] for _ in range(50)]
    _, (gap,) = paired_means([], [], 42, ("d",), distinct=[(Distinct(fresh, 1), Distinct(worn, 1))])
    assert gap.low < gap.diff < gap.high, gap
    assert gap.high - gap.low < 30  # the spread of the draws is kept, only its centre moves
