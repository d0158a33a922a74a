"""Every stage that samples does so from the plain distribution, whatever the model's generation_config.json
says (issue 14, defect 2): ppo (rollouts and held-out answers), grpo and rloo (trl's own generation config),
and evaluate, which records the settings it used and keeps the model's own only when asked."""

from __future__ import annotations

import json

from tests.conftest import write_jsonl
from tests.stages.conftest import run_recipe, sample
from tests.stages.test_grpo import grpo_stage
from tests.stages.test_ppo import brevity, ppo_stage
from tests.unit.test_exact_sampling import assert_plain_sampling, poisoned_copy, processors_built  # noqa: F401

# Left unset in a call, each would be filled from the poisoned file (trl sets some of these itself).
TRL_POISON = {"min_p": 0.2, "no_repeat_ngram_size": 2, "typical_p": 0.9, "bad_words_ids": [[7]],
              "suppress_tokens": [8], "min_new_tokens": 4}


def test_ppo_rollouts_and_heldout_answers_sample_the_plain_distribution(tmp_path, tiny_model, processors_built):
    model = poisoned_copy(tiny_model, tmp_path / "poisoned")
    stage = ppo_stage(model, brevity(), num_rollouts=1, rollout_batch_size=8, max_prompts=12, heldout_prompts=4,
                      ppo_epochs=1)
    assert run_recipe(tmp_path, [stage]) == 0
    assert len(processors_built) >= 3  # held-out before, the rollout, held-out after
    assert_plain_sampling(processors_built)
    saved = json.loads((tmp_path / "run" / "ppo" / "model" / "generation_config.json").read_text(encoding="utf-8"))
    assert saved["repetition_penalty"] == 1.5  # the model keeps its own settings for serving


def _trl_run(tmp_path, tiny_model, kind: str, processors_built) -> None:
    model = poisoned_copy(tiny_model, tmp_path / "poisoned", **TRL_POISON)
    stage = grpo_stage(model, shuffle=False, kind=kind)
    stage["args"]["heldout_prompts"] = 0
    stage["trainer"]["max_steps"] = 1
    assert run_recipe(tmp_path, [stage]) == 0
    assert_plain_sampling(processors_built)
    saved = json.loads((tmp_path / "run" / "grpo" / "model" / "generation_config.json").read_text(encoding="utf-8"))
    assert saved["no_repeat_ngram_size"] == 2 and saved["min_p"] == 0.2  # restored before saving


def test_grpo_samples_the_plain_distribution(tmp_path, tiny_model, processors_built):
    _trl_run(tmp_path, tiny_model, "grpo", processors_built)


def test_rloo_samples_the_plain_distribution(tmp_path, tiny_model, processors_built):
    _trl_run(tmp_path, tiny_model, "rloo", processors_built)


def test_evaluate_decodes_greedily_and_records_the_settings_it_used(tmp_path, tiny_model, processors_built):
    model = poisoned_copy(tiny_model, tmp_path / "poisoned")
    data = write_jsonl(tmp_path / "dialogues.jsonl", [{"prompt": "孩子咳嗽有痰怎么办？", "reference": "多喝水。"}])
    stage = {"id": "eval", "kind": "evaluate", "inputs": {"models": [str(model)], "data": [str(data)]},
             "args": {"max_new_tokens": 8}}
    (tmp_path / "exact").mkdir()
    (tmp_path / "own").mkdir()
    assert run_recipe(tmp_path / "exact", [stage]) == 0
    assert_plain_sampling(processors_built)
    used = json.loads((tmp_path / "exact" / "run" / "eval" / "results.json").read_text(encoding="utf-8"))
    used = used["generation"]
    assert used["poisoned"]["do_sample"] is False and used["poisoned"]["repetition_penalty"] == 1.0
    assert used["poisoned"]["model_generation_config"] is False and used["poisoned"]["max_new_tokens"] == 8

    processors_built.clear()
    stage["args"]["model_generation_config"] = True
    assert run_recipe(tmp_path / "own", [stage]) == 0
    assert "RepetitionPenaltyLogitsProcessor" in processors_built[-1][0]
    used = json.loads((tmp_path / "own" / "run" / "eval" / "results.json").read_text(encoding="utf-8"))["generation"]
    assert used["poisoned"]["repetition_penalty"] == 1.5 and used["poisoned"]["model_generation_config"] is True
    assert used["poisoned"]["do_sample"] is False  # temperature 0 is still greedy


def test_ai_feedback_samples_the_plain_distribution(tmp_path, tiny_model, processors_built):
    model = poisoned_copy(tiny_model, tmp_path / "poisoned")
    stage = {"id": "fb", "kind": "ai_feedback",
             "inputs": {"model": str(model), "prompts": sample("doctor_dialogues.jsonl")},
             "args": {"samples_per_prompt": 2, "max_prompts": 2, "max_new_tokens": 8},
             "reward": {"_component_": "tests.helpers.rewards.CharOverlap"}}
    assert run_recipe(tmp_path, [stage]) == 0
    assert_plain_sampling(processors_built)
    assert all(not config.top_k for _, config in processors_built)
