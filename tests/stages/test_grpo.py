"""grpo and rloo with an rlmed reward source: learning shows on held-out prompts; a shuffled-reward control
does not."""

from __future__ import annotations

import json

import pytest

from tests.stages.conftest import manifest, run_recipe, sample

# Held-out reward (mean -len/50 over 24 held-out answers; manifest heldout_reward_end - _start) must rise at least
# MIN_HELDOUT_RISE with the learnable reward, and at least MIN_GAP more than with the shuffled one. Both runs start
# from the same model, seed and held-out answers, so the gap is a paired comparison. Measured with this test's
# stages over seeds 1-6 (this machine, 2026-12-07): grpo rose 0.137-0.367, its control -0.067-0.096, gap
# 0.098-0.366; rloo rose 0.057-0.383, control -0.033-0.103, gap 0.090-0.357. A fixed ceiling on the control (the
# old check) failed at seeds 3 and 4: random updates from a shuffled reward also shorten answers a little, so the
# control is not centred on 0. The bars are about half the lowest of six seeds, for other CPUs' trajectories.
MIN_HELDOUT_RISE = {"grpo": 0.06, "rloo": 0.025}
MIN_GAP = {"grpo": 0.05, "rloo": 0.045}


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
    assert rise["learn"] >= MIN_HELDOUT_RISE[kind] and rise["learn"] - rise["control"] >= MIN_GAP[kind], rise
    m = manifest(tmp_path / "learn", "grpo")["metrics"]
    assert m["rewards_unscored"] == 0 and m["rewards_scored"] == 32 * 8
