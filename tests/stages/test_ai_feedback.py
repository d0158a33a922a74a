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


# Per-prompt gaps between the best and worst scored answer in the test below (CharOverlap, fail_every=5), measured
# for generation seeds 0-5 (args.seed; the recipe's default is 1), each sorted, on this machine:
#   0: .023 .034 .056 .071 .072 .075   1: .000 .015 .032 .034 .048 .054   2: .009 .016 .036 .068 .068 .080
#   3: .008 .016 .030 .051 .079 .179   4: .023 .038 .040 .054 .077 .079   5: .030 .034 .045 .048 .054 .064
# A bar of 0.045 leaves 2-3 prompts below it and 2-4 pairs above it in every seed: both sides are exercised.
MIN_MARGIN = 0.045


def expected_pairs(scored: list[dict], min_margin: float) -> dict[str, tuple[float, float]]:
    """(best, worst) score per prompt, recomputed from scored.jsonl, for the prompts that should pair: two or more
    non-empty answers with a score, whose best and worst differ, by at least min_margin."""
    by_prompt: dict[str, list[float]] = {}
    for r in scored:
        if r["score"] is not None and r["completion"].strip():
            by_prompt.setdefault(r["prompt_id"], []).append(r["score"])
    gaps = {p: (max(v), min(v)) for p, v in by_prompt.items() if len(v) >= 2}
    return {p: (hi, lo) for p, (hi, lo) in gaps.items() if hi > lo and hi - lo >= min_margin}


def test_feedback_writes_candidates_scores_and_pairs(tmp_path, tiny_model):
    reward = {"_component_": "tests.helpers.rewards.CharOverlap", "fail_every": 5}
    stage = feedback(str(tiny_model), reward, max_failed_fraction=0.5, min_margin=MIN_MARGIN)
    assert run_recipe(tmp_path, [stage]) == 0
    candidates, scored, pairs = rows(tmp_path, "candidates.jsonl"), rows(tmp_path, "scored.jsonl"), \
        rows(tmp_path, "pairs.jsonl")
    assert len(candidates) == len(scored) == 6 * 3
    assert [c["completion"] for c in candidates] == [s["completion"] for s in scored]
    assert all(c["reference"] for c in candidates)  # the doctor's reply travels with every candidate
    unscored = [s for s in scored if s["score"] is None]
    assert len(unscored) == 18 // 5 and all(s["error"] == "deliberately unscored" for s in unscored)
    m = manifest(tmp_path, "fb")["metrics"]
    assert len(pairs) > 0 and m["below_margin"] > 0  # both sides of the bar occur (measurements above)
    assert {p["prompt_id"]: (p["chosen_score"], p["rejected_score"]) for p in pairs} == \
        expected_pairs(scored, MIN_MARGIN)
    answers = {(s["prompt_id"], s["completion"], s["score"]) for s in scored}
    prompts = {s["prompt_id"]: s["prompt"] for s in scored}
    for pair in pairs:  # the texts are the candidates that got those scores, asked that prompt
        assert (pair["prompt_id"], pair["chosen"], pair["chosen_score"]) in answers
        assert (pair["prompt_id"], pair["rejected"], pair["rejected_score"]) in answers
        assert pair["margin"] == pair["chosen_score"] - pair["rejected_score"] >= MIN_MARGIN
        assert pair["messages"] == prompts[pair["prompt_id"]] and pair["messages"][-1]["role"] == "user"
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
