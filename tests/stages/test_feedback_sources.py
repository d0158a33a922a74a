"""ai_feedback with each of the five reward sources, swapped by editing only the recipe's reward block."""

from __future__ import annotations

import json

import pytest

from tests.reward.server import JudgeServer
from tests.stages.conftest import manifest, run_recipe, sample

CRITERIA = ("informativeness", "coherence", "human_preference", "factual_accuracy")


def pointwise_reply(body: dict) -> str:
    """A well-formed verdict whose scores vary with the candidate, so pairs can form."""
    seed = sum(map(ord, json.dumps(body["messages"], ensure_ascii=False))) % 9
    return json.dumps({"scores": {c: 1 + (seed + i) % 10 for i, c in enumerate(CRITERIA)}, "overall": 1 + seed,
                       "rationale": "按参考答案评估"}, ensure_ascii=False)


@pytest.fixture(scope="module")
def judge():
    with JudgeServer() as server:
        server.script(then=pointwise_reply)
        yield server


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, tiny_model):
    """A sequence-classification head on the tiny model, saved as a model folder (as a reward_model stage would)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("rm") / "model"
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


SOURCES = {
    "judge": lambda judge, rm: {"_component_": "reward.judge.LLMJudge", "model": "judge-test",
                                "base_url": judge.base_url, "api_key_env": None, "timeout_s": 10.0},
    "reward_model": lambda judge, rm: {"_component_": "reward.model.RewardModel", "path": str(rm), "batch_size": 4},
    "similarity": lambda judge, rm: {"_component_": "reward.similarity.ReferenceSimilarity"},
    "rules": lambda judge, rm: {"_component_": "reward.rules.Rules", "referral_phrases": ["就医", "医院"],
                                "red_flag_terms": ["抽搐", "高热"], "min_chars": 4, "max_chars": 400,
                                "length_penalty": 0.5},
    "composite": lambda judge, rm: {"_component_": "reward.composite.Composite", "sources": [
        {"_component_": "reward.similarity.ReferenceSimilarity", "weight": 0.7, "name": "sim"},
        {"_component_": "reward.rules.Rules", "min_chars": 4, "weight": 0.3, "name": "rules"}]},
}


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_the_same_recipe_runs_with_each_source(tmp_path, tiny_model, judge, reward_model_dir, source):
    stage = {"id": "fb", "kind": "ai_feedback",
             "inputs": {"model": str(tiny_model), "prompts": sample("doctor_dialogues.jsonl")},
             "args": {"samples_per_prompt": 2, "max_prompts": 4, "max_new_tokens": 16},
             "reward": SOURCES[source](judge, reward_model_dir)}
    assert run_recipe(tmp_path, [stage]) == 0
    metrics = manifest(tmp_path, "fb")["metrics"]
    assert metrics["candidates"] == 8 and metrics["scored"] == 8 and metrics["failed_scores"] == 0
    scored = [json.loads(line) for line in (tmp_path / "run" / "fb" / "scored.jsonl").read_text().splitlines()]
    assert all(isinstance(r["score"], float) for r in scored)
    if source in ("judge", "composite", "rules"):
        assert all(r["parts"] for r in scored)  # per-criterion / per-source parts are kept
