"""pack: EOS at every document boundary, equal blocks, honest token accounting."""

import pytest

from rlmed.data.packing import pack

EOS = 0


def make_docs():
    # Lengths chosen so documents straddle block boundaries.
    return [list(range(1, n + 1)) for n in (5, 1, 9, 3, 12, 2)]


def test_eos_at_every_document_boundary():
    docs = make_docs()
    result = pack(docs, block_size=4, eos_id=EOS, drop_last=False)
    stream = [t for block in result.blocks for t in block]
    pos = -1
    for doc in docs:
        pos += len(doc) + 1
        assert stream[pos] == EOS
    assert stream.count(EOS) == len(docs)
    assert pos == len(stream) - 1


def test_blocks_all_exactly_block_size_when_drop_last():
    result = pack(make_docs(), block_size=5, eos_id=EOS)
    assert result.blocks
    assert all(len(block) == 5 for block in result.blocks)


def test_dropped_tokens_counts_the_discarded_tail():
    docs = make_docs()
    total = sum(len(d) + 1 for d in docs)  # 38 with EOS
    result = pack(docs, block_size=5, eos_id=EOS)
    assert result.num_tokens == total
    assert result.dropped_tokens == total % 5
    assert len(result.blocks) * 5 + result.dropped_tokens == total


def test_docs_already_ending_in_eos_get_no_second_eos():
    result = pack([[1, 2, EOS], [3, EOS], [4]], block_size=2, eos_id=EOS, drop_last=False)
    assert result.blocks == [[1, 2], [EOS, 3], [EOS, 4], [EOS]]
    assert result.num_tokens == 7


def test_drop_last_false_keeps_the_short_tail():
    result = pack([[1, 2, 3]], block_size=3, eos_id=EOS, drop_last=False)
    assert result.blocks == [[1, 2, 3], [EOS]]
    assert result.dropped_tokens == 0


def test_empty_docs_are_skipped_and_generators_accepted():
    result = pack((d for d in [[], [1, 2, 3], []]), block_size=2, eos_id=EOS)
    assert result.num_docs == 1
    assert result.blocks == [[1, 2], [3, EOS]]


def test_document_longer_than_many_blocks_is_split_evenly():
    result = pack([list(range(1, 100))], block_size=10, eos_id=EOS)
    assert len(result.blocks) == 10
    assert result.blocks[-1][-1] == EOS


@pytest.mark.parametrize("size", [0, 1])
def test_block_size_below_two_raises(size):
    with pytest.raises(ValueError, match="block_size"):
        pack([[1, 2]], block_size=size, eos_id=EOS)
