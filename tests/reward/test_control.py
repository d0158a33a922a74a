"""reward.control.Shuffled: the control source keeps the scores' distribution and breaks their link to samples."""

from __future__ import annotations

from reward.base import Sample, Score, score_sync
from reward.control import Shuffled
from reward.rules import Rules

PROMPT = [{"role": "user", "content": "孩子发烧，今天还抽搐了一次，怎么办？"}]


class Indexed:
    """Scores sample i with value i (None for completions marked 'x'), parts and rationale saying which."""

    async def score(self, samples):
        return [Score.failed("marked") if s.completion == "x" else
                Score(value=float(i), parts={"index": float(i)}, rationale=f"sample {i}")
                for i, s in enumerate(samples)]


def samples(n: int, failed: tuple[int, ...] = ()) -> list[Sample]:
    return [Sample(PROMPT, "x" if i in failed else f"answer {i}") for i in range(n)]


def test_shuffled_permutes_whole_scores_and_keeps_the_distribution():
    scores = score_sync(Shuffled(Indexed(), seed=3), samples(50))
    values = [s.value for s in scores]
    assert sorted(values) == [float(i) for i in range(50)]  # the same values ...
    assert sum(v != i for i, v in enumerate(values)) > 40    # ... mostly elsewhere
    for s in scores:  # each Score moves whole: value, parts and rationale still agree
        assert s.parts == {"index": s.value} and s.rationale == f"sample {int(s.value)}"


def test_shuffled_leaves_unscored_samples_in_place():
    scores = score_sync(Shuffled(Indexed(), seed=0), samples(20, failed=(2, 7)))
    assert [i for i, s in enumerate(scores) if s.value is None] == [2, 7]
    assert sorted(s.value for s in scores if s.value is not None) == [float(i) for i in range(20) if i not in (2, 7)]


def test_shuffled_is_reproducible_by_seed_and_draws_anew_per_call():
    first, again = Shuffled(Indexed(), seed=11), Shuffled(Indexed(), seed=11)
    call_1 = [s.value for s in score_sync(first, samples(30))]
    assert call_1 == [s.value for s in score_sync(again, samples(30))]
    assert call_1 != [s.value for s in score_sync(first, samples(30))]  # the second call: a new permutation
    assert call_1 != [s.value for s in score_sync(Shuffled(Indexed(), seed=12), samples(30))]


def test_shuffled_rules_no_longer_reward_the_referral():
    rules = Rules(red_flag_terms=["抽搐"], referral_phrases=["急诊"])
    batch = [Sample(PROMPT, "请立即去急诊。" if i % 2 else "多喝水。") for i in range(200)]
    real = score_sync(rules, batch)
    shuffled = score_sync(Shuffled(rules, seed=5), batch)
    referred = [i for i in range(200) if i % 2]
    assert all(real[i].value == 1.0 for i in referred)
    mean_referred = sum(shuffled[i].value for i in referred) / len(referred)
    assert 0.3 < mean_referred < 0.7  # about the overall mean, 0.5: the signal is gone
