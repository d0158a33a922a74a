"""ai_feedback on the tiny model: candidates before scores, pairs by margin, failures counted, resume."""

from __future__ import annotations

import json

from tests.stages.conftest import manifest, run_recipe, sample


def feedback(model: str, reward: dict, **args) -> dict:
    return {"id": "fb", "kind": "ai_feedback",
            "inputs": {"model": model, "prompts": sample("doctor_dialogues.jsonl")},
            "args": {"samples_per_prompt": 3, "max_prompts": 6, "max_new_tokens": 24, "batch_size": 4, **args},
            "reward": reward}


def rows(tmp_path, name: str) -> list[dict]:
    text = (tmp_path / "run" / "fb" / name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def test_feedback_writes_candidates_scores_and_pairs(tmp_path, tiny_model):
    reward = {"_component_": "tests.helpers.rewards.CharOverlap", "fail_every": 5}
    assert run_recipe(tmp_path, [feedback(str(tiny_model), reward, max_failed_fraction=0.5)]) == 0
    candidates, scored, pairs = rows(tmp_path, "candidates.jsonl"), rows(tmp_path, "scored.jsonl"), \
        rows(tmp_path, "pairs.jsonl")
    assert len(candidates) == len(scored) == 6 * 3
    assert [c["completion"] for c in candidates] == [s["completion"] for s in scored]
    assert all(c["reference"] for c in candidates)  # the doctor's reply travels with every candidate
    unscored = [s for s in scored if s["score"] is None]
    assert len(unscored) == 18 // 5 and all(s["error"] == "deliberately unscored" for s in unscored)
    for pair in pairs:
        assert pair["chosen_score"] > pair["rejected_score"] and pair["margin"] > 0
        assert pair["messages"][-1]["role"] == "user"
    m = manifest(tmp_path, "fb")["metrics"]
    assert m["candidates"] == 18 and m["failed_scores"] == 3 and m["pairs"] == len(pairs)
    assert m["pairs"] + m["ties"] + m["below_margin"] + m["too_few_scored"] == 6
    assert sum(m["score_histogram"]["counts"]) == 15


def test_too_many_unscored_candidates_fail_the_stage(tmp_path, tiny_model, capsys):
    reward = {"_component_": "tests.helpers.rewards.CharOverlap", "fail_every": 2}
    assert run_recipe(tmp_path, [feedback(str(tiny_model), reward, max_failed_fraction=0.2)]) == 1
    assert "could not be scored (more than max_failed_fraction=0.2)" in capsys.readouterr().err
    assert (tmp_path / "run" / "fb" / "scored.jsonl").exists()  # what was scored is kept for inspection
    assert not (tmp_path / "run" / "fb" / "manifest.json").exists()


def test_pairs_feed_the_pairwise_reader(tmp_path, tiny_model):
    from rlmed.data.pairwise import as_pair
    from rlmed.data.records import read_records

    reward = {"_component_": "tests.helpers.rewards.CharOverlap"}
    assert run_recipe(tmp_path, [feedback(str(tiny_model), reward, min_margin=0.01)]) == 0
    pairs = read_records(tmp_path / "run" / "fb" / "pairs.jsonl")
    assert pairs and all(as_pair(r).chosen != as_pair(r).rejected for r in pairs)


def test_an_empty_answer_is_never_paired_and_is_counted():
    from rlmed.stages.ai_feedback import make_pairs

    def row(sample, completion, score):
        return {"prompt_id": "p0", "sample": sample, "prompt": [{"role": "user", "content": "孩子发烧怎么办？"}],
                "reference": "多喝水。", "completion": completion, "score": score}

    scored = [row(0, "", -1.0), row(1, "多喝水，观察精神。", 0.2), row(2, "立即去急诊。", 0.9)]
    pairs, counts = make_pairs(scored, min_margin=0.0)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("立即去急诊。", "多喝水，观察精神。")]
    assert counts["empty_answers"] == 1
