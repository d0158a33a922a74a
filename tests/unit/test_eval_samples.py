"""Generation rows answered several times (evaluate's samples_per_prompt): every metric of a row is the mean over
its samples, the reward too, and each part; the first answer stays the row's answer."""

from __future__ import annotations

import pytest

from reward.base import Score
from reward.rules import Rules
from rlmed.eval.generations import GenerationsError, add_reward_scores, check_row, saved_row, set_values
from rlmed.eval.text_metrics import text_metric_rows

PROMPT = [{"role": "user", "content": "孩子发烧，刚才突然抽搐了一次，怎么办？"}]
REFERENCE = "需要提醒您：抽搐是危险信号，请立即去医院急诊。"


def rows() -> list[dict]:
    return [saved_row("held", 0, "generation", PROMPT, "多喝水。", reference=REFERENCE,
                      samples=["多喝水。", "请立即去医院急诊。", "抽搐是危险信号，请立即去急诊。"]),
            saved_row("held", 1, "generation", PROMPT, "观察精神。", reference=REFERENCE, samples=["观察精神。"])]


def test_a_row_answered_several_times_keeps_its_samples_and_first_answer():
    first, single = rows()
    assert first["answer"] == "多喝水。" and len(first["samples"]) == 3
    assert "samples" not in single  # one answer: nothing more to keep


def test_text_metrics_of_a_row_are_the_mean_over_its_samples():
    values = set_values("generation", rows())
    per_sample, _ = text_metric_rows([REFERENCE] * 3, rows()[0]["samples"])
    assert values.rows["rouge_l"][0] == pytest.approx(sum(per_sample["rouge_l"]) / 3)
    alone, _ = text_metric_rows([REFERENCE], ["观察精神。"])
    assert values.rows["rouge_l"][1] == alone["rouge_l"][0]


def test_reward_of_a_row_is_the_mean_over_its_scored_samples_with_part_means():
    rules = Rules(red_flag_terms=["抽搐"], referral_phrases=["急诊"], forbidden_phrases=["阿司匹林"])
    scored = add_reward_scores(rules, rows())
    assert scored[0]["sample_rewards"] == [0.5, 1.0, 1.0]  # the first sample misses the referral
    assert scored[0]["reward"] == pytest.approx(2.5 / 3)
    assert scored[0]["reward_parts"] == {"referral": pytest.approx(2 / 3), "forbidden": 1.0}
    assert scored[1]["reward"] == 0.5 and "sample_rewards" not in scored[1]
    values = set_values("generation", scored)
    assert values.rows["reward.referral"].tolist() == pytest.approx([2 / 3, 0.0])


def test_unscored_samples_are_left_out_of_the_mean_never_counted_as_zero():
    class FailsSecond:
        async def score(self, samples):
            return [Score.failed("down") if i == 1 else Score(value=1.0) for i, _ in enumerate(samples)]

    scored = add_reward_scores(FailsSecond(), rows()[:1])
    assert scored[0]["reward"] == 1.0 and scored[0]["sample_rewards"] == [1.0, None, 1.0]
    assert scored[0]["reward_error"] == ["down"]


def test_samples_that_are_not_a_list_of_answers_are_a_clear_error():
    row = rows()[0] | {"samples": "多喝水。"}
    with pytest.raises(GenerationsError, match="'samples' should be a non-empty list of answer strings"):
        check_row(row, "gen.jsonl:1", "re-run")
