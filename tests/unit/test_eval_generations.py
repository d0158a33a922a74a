"""Saved generation rows: checked on reading (file:line), scored by kind, reward means over scored rows only."""

from __future__ import annotations

import json

import pytest

from rlmed.eval.generations import (GenerationsError, model_metrics, read_generations, reward_means, saved_row,
                                    set_kinds)
from rlmed.eval.hitrate import hit_rates
from rlmed.eval.text_metrics import text_metrics

PROMPT = [{"role": "user", "content": "问题"}]


def rows() -> list[dict]:
    return [
        saved_row("d", 0, "generation", PROMPT, "多喝水，及时就医。", reference="多喝水，及时就医。"),
        saved_row("d", 1, "generation", PROMPT, "观察", reference="三天不退请就医"),
        saved_row("m", 0, "choice", PROMPT, "答案是B", options=["甲", "乙"], answer_key="B"),
        saved_row("m", 1, "choice", PROMPT, "A", options=["甲", "乙"], answer_key="B"),
        saved_row("k", 0, "hitrate", PROMPT, "儿童发热可用", items=["儿童发热", "疼痛"]),
    ]


def test_model_metrics_score_each_set_by_its_kind():
    out = model_metrics(rows(), {"d": "generation", "m": "choice", "k": "hitrate"})
    assert out["m/accuracy"] == 50.0 and out["m/wrong"] == 50.0 and out["m/unanswerable"] == 0.0
    assert {k: out[f"k/{k}"] for k in hit_rates(["儿童发热可用"], [["儿童发热", "疼痛"]])} == \
        hit_rates(["儿童发热可用"], [["儿童发热", "疼痛"]])
    expected = text_metrics(["多喝水，及时就医。", "三天不退请就医"], ["多喝水，及时就医。", "观察"])
    assert {k: out[f"d/{k}"] for k in expected} == expected
    assert list(out)[0].startswith("d/") and list(out)[-1].startswith("k/")  # the given set order


def test_reward_means_skip_unscored_rows():
    scored = [{**r, "reward": v} for r, v in zip(rows()[:2], (0.5, None))]
    assert reward_means(scored + rows()[2:]) == {"d/reward_mean": 0.5}
    assert reward_means([{**rows()[0], "reward": None}]) == {"d/reward_mean": None}


def test_read_generations_names_file_and_line(tmp_path):
    path = tmp_path / "eval" / "generations" / "sft.jsonl"
    path.parent.mkdir(parents=True)
    bad = {**rows()[2], "options": "甲乙"}
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [rows()[0], bad]) + "\n", encoding="utf-8")
    with pytest.raises(GenerationsError, match=rf"{path}:2: 'options' should be a list for a choice row"):
        read_generations(path)
    path.write_text("", encoding="utf-8")
    with pytest.raises(GenerationsError, match="has no rows; re-run .* --only eval"):
        read_generations(path)


def test_one_set_has_one_kind():
    mixed = [rows()[0], {**rows()[2], "set": "d"}]
    with pytest.raises(GenerationsError, match="eval set 'd' has rows of kind generation and choice"):
        set_kinds(mixed, "x.jsonl")
