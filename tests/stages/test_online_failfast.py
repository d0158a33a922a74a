"""grpo and rloo stop at the first reward call after which more than max_failed_fraction of the run's samples
went unscored, as ppo does after each rollout: a broken judge must not cost a whole run of generation and
updates, nor leave a saved model behind that looks finished."""

from __future__ import annotations

import pytest

from tests.conftest import read_metrics
from tests.helpers.counted_rewards import calls
from tests.stages.conftest import manifest, run_recipe, sample

MAX_STEPS = 20
PER_CALL = 8  # completions per reward call: per_device_train_batch_size, one generation per optimizer step


def online_stage(model, kind: str, log, fail_every: int, max_failed_fraction: float, max_steps: int) -> dict:
    return {"id": "online", "kind": kind,
            "inputs": {"model": str(model), "prompts": sample("doctor_dialogues.jsonl")},
            "args": {"max_prompts": 16, "max_failed_fraction": max_failed_fraction},
            "reward": {"_component_": "tests.helpers.counted_rewards.CountedOverlap", "log": str(log),
                       "fail_every": fail_every},
            "trainer": {"max_steps": max_steps, "per_device_train_batch_size": PER_CALL, "num_generations": 4,
                        "max_completion_length": 8, "learning_rate": 1e-6, "logging_steps": 1, "save_steps": 5}}


@pytest.mark.parametrize("kind", ["grpo", "rloo"])
def test_the_first_reward_call_past_the_fraction_stops_the_stage(tmp_path, tiny_model, capsys, kind):
    log = tmp_path / "calls.jsonl"
    # Every 2nd sample unscored: the first call already leaves 4 of 8 (0.5) unscored, more than 0.3.
    stage = online_stage(tiny_model, kind, log, fail_every=2, max_failed_fraction=0.3, max_steps=MAX_STEPS)
    assert run_recipe(tmp_path, [stage]) == 1
    err = capsys.readouterr().err
    assert (f"{PER_CALL // 2} of {PER_CALL} rewards could not be scored over 1 rank(s) "
            "(more than max_failed_fraction=0.3)") in err, err[-3000:]
    assert "deliberately unscored" in err
    assert calls(log) == [{"samples": PER_CALL, "unscored": PER_CALL // 2}]  # one call of the 20 steps' worth
    stage_dir = tmp_path / "run" / "online"
    metrics = read_metrics(stage_dir) if (stage_dir / "metrics.jsonl").exists() else []
    assert not [r for r in metrics if "loss" in r]  # no optimizer step was taken on that batch
    assert not (stage_dir / "model").exists() and not (stage_dir / "manifest.json").exists()
    assert not list(stage_dir.glob("checkpoints/checkpoint-*"))


def test_unscored_samples_within_the_fraction_are_counted_and_training_goes_on(tmp_path, tiny_model):
    log = tmp_path / "calls.jsonl"
    stage = online_stage(tiny_model, "grpo", log, fail_every=4, max_failed_fraction=0.3, max_steps=2)
    assert run_recipe(tmp_path, [stage]) == 0
    assert len(calls(log)) == 2
    m = manifest(tmp_path, "online")["metrics"]
    assert (m["rewards_scored"], m["rewards_unscored"]) == (2 * PER_CALL * 3 // 4, 2 * PER_CALL // 4)
    assert (tmp_path / "run" / "online" / "model").is_dir()
