"""Every metric of every model against the baseline, reward parts, and per-row breakdowns from saved rows."""

from __future__ import annotations

import pytest

from rlmed.eval.comparisons import breakdowns, comparisons
from rlmed.eval.generations import (add_reward_scores, model_metrics, model_values, reward_means, saved_row,
                                    summarise_model)

PROMPT = [{"role": "user", "content": "孩子发烧抽搐怎么办？"}]
KINDS = {"d": "generation", "m": "choice"}
GOOD, POOR = "多喝水，抽搐请立即就医。", "观察"


def rows(answer_of, referral_of, n=24) -> list[dict]:
    """n dialogue rows (conditions alternating 发热 / 腹泻, every third a red flag), then 12 choice rows."""
    out = []
    for i in range(n):
        row = saved_row("d", i, "generation", PROMPT, answer_of(i), reference=GOOD,
                        tags={"condition": "发热" if i % 2 else "腹泻", "red_flag": i % 3 == 0})
        row.update(reward=float(referral_of(i)), reward_parts={"rules.referral": float(referral_of(i)), "rules": 1.0})
        out.append(row)
    for i in range(12):
        out.append(saved_row("m", i, "choice", PROMPT, "B" if i % 2 else "A", options=["甲", "乙"], answer_key="B"))
    return out


@pytest.fixture(scope="module")
def values():
    base = rows(lambda i: POOR, lambda i: 0)
    # The tuned model refers every red-flag row; its other answers are the baseline's.
    tuned = rows(lambda i: GOOD if i % 3 == 0 else POOR, lambda i: 1 if i % 3 == 0 else 0)
    return {"base": model_values(base, KINDS), "tuned": model_values(tuned, KINDS)}


def test_every_metric_and_reward_part_is_compared_with_the_baseline(values):
    found = comparisons(values, "base", seed=5)
    assert set(found) == {"tuned"}
    metrics, reward = summarise_model(values["tuned"])
    assert set(found["tuned"]) == set(metrics) | set(reward)  # BLEU..Distinct, accuracy, reward and its parts
    assert {"d/distinct_1", "d/distinct_2", "m/unanswerable", "d/reward.rules.referral",
            "d/reward_mean"} <= set(found["tuned"])
    base_metrics, base_reward = summarise_model(values["base"])
    for key, e in found["tuned"].items():
        change = {**metrics, **reward}[key] - {**base_metrics, **base_reward}[key]
        assert e["diff"] == pytest.approx(change, abs=1e-9), key
        assert e["low"] <= e["diff"] + 1e-9 and e["diff"] <= e["high"] + 1e-9, key
    assert found["tuned"]["m/accuracy"] == {"diff": 0.0, "low": 0.0, "high": 0.0, "n": 12, "significant": False,
                                            "verdict": "no clear change", "lower_is_better": False}
    assert found["tuned"]["d/rouge_l"]["verdict"] == "better"  # a third of the answers match the reference now
    assert found["tuned"]["d/reward.rules.referral"]["diff"] == pytest.approx(8 / 24)


def test_metrics_from_per_row_values_equal_the_reported_ones_to_the_bit():
    saved = rows(lambda i: GOOD if i % 5 else POOR + str(i), lambda i: i % 2)
    metrics, reward = summarise_model(model_values(saved, KINDS))
    assert metrics == model_metrics(saved, KINDS)
    assert reward == reward_means(saved)
    assert reward["d/reward.rules.referral"] == 0.5 and reward["d/reward.rules"] == 1.0


def test_breakdowns_group_rows_by_their_tags(values):
    found = breakdowns(values, "base", ["red_flag", "condition", "age"], seed=5)
    assert list(found["red_flag"]) == ["true", "false"] and list(found["condition"]) == ["腹泻", "发热"]
    assert found["age"] == {}  # no row has it
    red = found["red_flag"]["true"]
    assert red["n"] == {"d": 8}  # choice rows carry no tags: they are in no group
    # The red-flag referral rate: the mean of the rules.referral part over the red-flag rows.
    assert red["metrics"]["tuned"]["d/reward.rules.referral"] == 1.0
    assert red["metrics"]["base"]["d/reward.rules.referral"] == 0.0
    assert found["red_flag"]["false"]["metrics"]["tuned"]["d/reward.rules.referral"] == 0.0
    assert "d/distinct_2" in red["metrics"]["tuned"]  # corpus-level, recomputed over the group's answers
    e = red["comparisons"]["tuned"]["d/reward.rules.referral"]
    assert (e["diff"], e["low"], e["high"], e["n"]) == (1.0, 1.0, 1.0, 8)
    assert e["verdict"] == "too few rows"  # 8 rows: the interval is shown, no verdict
    assert found["condition"]["发热"]["n"] == {"d": 12}
    assert found == breakdowns(values, "base", ["red_flag", "condition", "age"], seed=5)  # seeded


def test_reward_parts_are_saved_in_the_rows():
    from reward.composite import Composite
    from reward.rules import Rules
    from reward.similarity import ReferenceSimilarity

    source = Composite([ReferenceSimilarity(), Rules(red_flag_terms=["抽搐"], forbidden_phrases=["偏方"])],
                       normalize="none")
    scored = add_reward_scores(source, [saved_row("d", 0, "generation", PROMPT, GOOD, reference=GOOD),
                                        saved_row("d", 1, "generation", PROMPT, POOR, reference=GOOD)])
    assert scored[0]["reward_parts"]["rules.referral"] == 1.0 and scored[1]["reward_parts"]["rules.referral"] == 0.0
    assert {"referencesimilarity", "rules", "rules.referral", "rules.forbidden"} <= set(scored[0]["reward_parts"])
    means = reward_means(scored)
    assert means["d/reward.rules.referral"] == 0.5 and means["d/reward.rules.forbidden"] == 1.0
