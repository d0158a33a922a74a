"""grpo and rloo with an rlmed reward source: learning shows on held-out prompts; a shuffled-reward control
does not."""

from __future__ import annotations

import json

import pytest

from tests.stages.conftest import manifest, run_recipe, sample

# Held-out reward (mean -len/50 over 24 held-out answers; manifest heldout_reward_end - _start) must rise at least
# the bar with the learnable reward and stay under a lower ceiling with the shuffled one. Measured with this
# test's stages over seeds 1, 2 (this machine): grpo 0.144, 0.137 against shuffled -0.038, 0.013; rloo 0.057,
# 0.180 against shuffled -0.033, -0.010. A similar sweep over seeds 1-4 gave grpo 0.117-0.456 (shuffled <= 0.010)
# and rloo 0.146-0.368 (shuffled <= 0.008). This replaced a 4-character shortening bar that was also the
# control's ceiling, and rloo had no control.
MIN_HELDOUT_RISE = {"grpo": 0.06, "rloo": 0.025}
MAX_CONTROL_RISE = {"grpo": 0.04, "rloo": 0.015}


def grpo_stage(model, shuffle: bool, kind: str = "grpo") -> dict:
    # RLOO's advantages are raw reward differences (about 0.1 here) unless normalised, and its default KL
    # penalty (beta 0.05, GRPO's is 0) holds a near-uniform tiny model in place.
    extra = {"normalize_advantages": True, "beta": 0.0} if kind == "rloo" else {}
    return {"id": "grpo", "kind": kind,
            "inputs": {"model": str(model), "prompts": sample("doctor_dialogues.jsonl")},
            "args": {"max_prompts": 56, "heldout_prompts": 24, "heldout_max_new_tokens": 24},
            "reward": {"_component_": "tests.helpers.rewards.Brevity", "shuffle": shuffle},
            "trainer": {"max_steps": 32, "learning_rate": 1e-2, "per_device_train_batch_size": 8,
                        "num_generations": 4, "max_completion_length": 24, "logging_steps": 1, **extra}}


def mean_length(path) -> float:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return sum(len(r["completion"]) for r in rows) / len(rows)


def shortening(tmp_path) -> float:
    stage_dir = tmp_path / "run" / "grpo"
    return mean_length(stage_dir / "heldout_start.jsonl") - mean_length(stage_dir / "heldout_end.jsonl")


def heldout_rise(tmp_path) -> float:
    m = manifest(tmp_path, "grpo")["metrics"]
    return m["heldout_reward_end"] - m["heldout_reward_start"]


@pytest.mark.parametrize("kind", ["grpo", "rloo"])
def test_learns_a_learnable_reward_and_not_a_shuffled_one(tmp_path, tiny_model, kind):
    (tmp_path / "learn").mkdir()
    (tmp_path / "control").mkdir()
    assert run_recipe(tmp_path / "learn", [grpo_stage(tiny_model, shuffle=False, kind=kind)]) == 0
    assert run_recipe(tmp_path / "control", [grpo_stage(tiny_model, shuffle=True, kind=kind)]) == 0
    assert manifest(tmp_path / "learn", "grpo")["kind"] == kind
    rise = {name: heldout_rise(tmp_path / name) for name in ("learn", "control")}
    assert rise["learn"] >= MIN_HELDOUT_RISE[kind] and rise["control"] < MAX_CONTROL_RISE[kind], rise
    m = manifest(tmp_path / "learn", "grpo")["metrics"]
    assert m["rewards_unscored"] == 0 and m["rewards_scored"] == 32 * 8
