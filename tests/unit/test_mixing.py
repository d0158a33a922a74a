"""mix: natural concatenation, exact weighted counts, bounded repetition, determinism."""

from collections import Counter

import pytest

from rlmed.data.mixing import mix


def test_natural_mix_contains_every_item_exactly_once():
    a = [f"a{i}" for i in range(30)]
    b = [f"b{i}" for i in range(70)]
    result = mix([a, b], None, seed=0)
    assert sorted(result.items) == sorted(a + b)
    assert result.counts == [30, 70]
    assert [item[0] for item in result.items] == ["ab"[s] for s in result.source_ids]
    assert result.items != a + b  # shuffled


def test_weighted_3_to_1_gives_exact_counts_and_ratio():
    small = [("s", i) for i in range(100)]
    large = [("l", i) for i in range(5000)]
    result = mix([small, large], [3, 1], seed=1, total=4000)
    assert result.counts == [3000, 1000]
    assert len(result.items) == 4000
    tolerance = 0.005  # 0.5% absolute on the share of source 0
    share = result.source_ids.count(0) / len(result.source_ids)
    assert abs(share - 0.75) <= tolerance
    # The downsampled source never repeats a row.
    assert len({item for item, sid in zip(result.items, result.source_ids) if sid == 1}) == 1000


def test_upsampled_source_repeats_each_item_floor_or_ceil_times():
    small = list(range(7))
    result = mix([small, list(range(100, 200))], [1, 1], seed=3, total=100)
    count = result.counts[0]
    assert count == 50
    reps = Counter(item for item, sid in zip(result.items, result.source_ids) if sid == 0)
    assert set(reps) == set(small)
    assert set(reps.values()) <= {count // len(small), -(-count // len(small))}


def test_largest_remainder_counts_sum_to_total():
    result = mix([list(range(10))] * 3, [1, 1, 1], seed=0, total=10)
    assert sum(result.counts) == 10
    assert sorted(result.counts) == [3, 3, 4]


def test_same_seed_same_result_different_seed_different_order():
    sources = [list(range(50)), list(range(100, 400))]
    first = mix(sources, [2, 1], seed=7, total=300)
    again = mix(sources, [2, 1], seed=7, total=300)
    other = mix(sources, [2, 1], seed=8, total=300)
    assert first.items == again.items and first.source_ids == again.source_ids
    assert other.items != first.items
    assert other.counts == first.counts


@pytest.mark.parametrize("weights,match", [
    ([1], "got 1 weights for 2 sources"),
    ([1, -1], "weight 1 must be a finite non-negative number"),
    ([0, 0], "at least one weight must be positive"),
    ([1, float("nan")], "weight 1 must be a finite non-negative number"),
    ([1, 1], "source 1 has positive weight"),
])
def test_bad_weights_raise_value_error(weights, match):
    with pytest.raises(ValueError, match=match):
        mix([[1, 2], []], weights, seed=0)


def test_zero_weight_empty_source_is_allowed():
    result = mix([[1, 2], []], [1, 0], seed=0, total=4)
    assert result.counts == [4, 0]
    assert sorted(result.items) == [1, 1, 2, 2]
