"""ai_feedback's pairing (make_pairs): per prompt, the best against the worst scored answer, and every prompt
that yields no pair counted under one reason: a tie, a margin below min_margin, too few scored answers.
Scores are binary fractions (0.25, 0.5, ...), so margins compare exactly with min_margin."""

from __future__ import annotations

import math

from rlmed.stages.ai_feedback import make_pairs

PROMPT = [{"role": "user", "content": "孩子发烧怎么办？"}]


def row(prompt_id: str, sample: int, completion: str, score: float | None) -> dict:
    return {"prompt_id": prompt_id, "sample": sample, "prompt": PROMPT + [{"role": "user", "content": prompt_id}],
            "reference": f"医生对 {prompt_id} 的回复", "completion": completion, "score": score}


def chosen_and_rejected(pairs: list[dict]) -> list[tuple[str, str, str]]:
    return [(p["prompt_id"], p["chosen"], p["rejected"]) for p in pairs]


def test_best_and_worst_of_each_prompt_are_paired_whatever_the_order():
    scored = [row("p0", 0, "a", 0.5), row("p1", 0, "x", 0.0), row("p0", 1, "b", 1.0), row("p0", 2, "c", 0.25),
              row("p1", 1, "y", 0.75), row("p0", 3, "d", 0.75)]
    pairs, counts = make_pairs(scored, min_margin=0.0)
    assert chosen_and_rejected(pairs) == [("p0", "b", "c"), ("p1", "y", "x")]
    first = pairs[0]
    assert (first["chosen_score"], first["rejected_score"], first["margin"]) == (1.0, 0.25, 0.75)
    assert first["messages"] == scored[0]["prompt"] and first["reference"] == scored[0]["reference"]
    assert counts == {"ties": 0, "below_margin": 0, "too_few_scored": 0, "empty_answers": 0}


def test_equal_scores_are_a_tie_not_a_pair():
    scored = [row("p0", 0, "a", 0.5), row("p0", 1, "b", 0.5), row("p0", 2, "c", 0.5)]
    pairs, counts = make_pairs(scored, min_margin=0.0)
    assert pairs == [] and counts["ties"] == 1


def test_the_same_answer_scored_twice_differently_is_a_tie():
    """A noisy judge may score one text twice apart: "chosen" and "rejected" would be the same reply."""
    scored = [row("p0", 0, "多喝水。", 0.25), row("p0", 1, " 多喝水。\n", 0.75)]
    pairs, counts = make_pairs(scored, min_margin=0.0)
    assert pairs == [] and counts["ties"] == 1


def test_min_margin_is_inclusive_and_a_smaller_gap_is_counted():
    scored = [row("p0", 0, "a", 0.25), row("p0", 1, "b", 0.75),  # gap 0.5: exactly min_margin, kept
              row("p1", 0, "c", 0.5), row("p1", 1, "d", 0.75)]  # gap 0.25: below
    pairs, counts = make_pairs(scored, min_margin=0.5)
    assert chosen_and_rejected(pairs) == [("p0", "b", "a")] and pairs[0]["margin"] == 0.5
    assert counts["below_margin"] == 1 and counts["ties"] == 0
    pairs, counts = make_pairs(scored, min_margin=0.0)  # the same answers with no bar: both pair
    assert len(pairs) == 2 and counts["below_margin"] == 0


def test_unscored_answers_are_never_paired():
    """An answer without a finite score (None: the source failed; NaN, inf) is neither chosen nor rejected: as
    the worst, it would teach that a judge's failure marks a bad answer."""
    scored = [row("p0", 0, "unscored", None), row("p0", 1, "a", 0.25), row("p0", 2, "nan", math.nan),
              row("p0", 3, "b", 0.5), row("p0", 4, "inf", -math.inf)]
    pairs, counts = make_pairs(scored, min_margin=0.0)
    assert chosen_and_rejected(pairs) == [("p0", "b", "a")]
    assert counts == {"ties": 0, "below_margin": 0, "too_few_scored": 0, "empty_answers": 0}


def test_a_prompt_with_fewer_than_two_scored_answers_is_counted():
    scored = [row("p0", 0, "a", 0.5), row("p0", 1, "b", None), row("p1", 0, "c", None), row("p1", 1, "d", None)]
    pairs, counts = make_pairs(scored, min_margin=0.0)
    assert pairs == [] and counts["too_few_scored"] == 2


def test_an_empty_answer_is_never_paired_and_is_counted():
    """An empty reply (the model ended at once) is a bad row to the pairwise stages, however it scored."""
    scored = [row("p0", 0, "", -1.0), row("p0", 1, "多喝水，观察精神。", 0.25), row("p0", 2, "立即去急诊。", 0.75),
              row("p1", 0, " \n", 1.0), row("p1", 1, "休息。", 0.0)]
    pairs, counts = make_pairs(scored, min_margin=0.0)
    assert chosen_and_rejected(pairs) == [("p0", "立即去急诊。", "多喝水，观察精神。")]
    assert counts["empty_answers"] == 2 and counts["too_few_scored"] == 1


def test_every_prompt_is_either_paired_or_counted_once():
    scored = [row("pair", 0, "a", 0.0), row("pair", 1, "b", 1.0), row("tie", 0, "c", 0.5), row("tie", 1, "d", 0.5),
              row("below", 0, "e", 0.5), row("below", 1, "f", 0.625), row("few", 0, "g", None),
              row("few", 1, "h", 0.5)]
    pairs, counts = make_pairs(scored, min_margin=0.25)
    assert [p["prompt_id"] for p in pairs] == ["pair"]
    assert counts == {"ties": 1, "below_margin": 1, "too_few_scored": 1, "empty_answers": 0}
