"""ppo: learns a learnable reward (and not a shuffled one), leaves unscored samples out, trains LoRA against
the adapter-disabled reference, logs rollouts and samples, and resumes exactly after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT, read_metrics, write_recipe
from tests.reward.server import JudgeServer
from tests.stages.test_feedback_sources import pointwise_reply
from tests.stages.conftest import manifest, run_recipe, sample
from tests.stages.test_grpo import mean_length

ROLLOUTS = 12
BATCH = 32
# Held-out reward (mean -len/50 over 16 greedy held-out answers, manifest heldout_reward_end - _start) must rise
# at least MIN_HELDOUT_RISE with the learnable reward, and at least MIN_GAP more than with the shuffled one (same
# model, seed and held-out start: a paired comparison). Measured with this test's stages over seeds 1-6 (this
# machine, 2026-12-07): learnable 0.131-0.938; shuffled -0.046-0.059 and gap 0.076-0.951 (seeds 1, 3-6). The
# old bar (a 0.35 rise) failed at seeds 3-5, and an earlier one, a 0.15 rise of the training reward, on another
# CPU at 0.14999991. The bars are about half the lowest of six seeds.
MIN_HELDOUT_RISE = 0.065
MIN_GAP = 0.04


def ppo_stage(model, reward: dict, **args) -> dict:
    return {"id": "ppo", "kind": "ppo",
            "inputs": {"model": str(model), "prompts": sample("doctor_dialogues.jsonl")},
            "args": {"max_prompts": 48, "heldout_prompts": 16, "heldout_max_new_tokens": 24, "num_rollouts": ROLLOUTS,
                     "rollout_batch_size": 16, "ppo_epochs": 2, "max_new_tokens": 24, "kl_coef": 0.01,
                     "save_every_rollouts": 5, **args},
            "reward": reward,
            "trainer": {"learning_rate": 1e-2, "per_device_train_batch_size": 8}}


def brevity(shuffle: bool = False) -> dict:
    return {"_component_": "tests.helpers.rewards.Brevity", "shuffle": shuffle}


def rollouts(tmp_path) -> list[dict]:
    return [r for r in read_metrics(tmp_path / "run" / "ppo") if "reward_mean" in r]


def shortening(tmp_path) -> float:
    stage_dir = tmp_path / "run" / "ppo"
    return mean_length(stage_dir / "heldout_start.jsonl") - mean_length(stage_dir / "heldout_end.jsonl")


def heldout_rise(tmp_path) -> float:
    m = manifest(tmp_path, "ppo")["metrics"]
    return m["heldout_reward_end"] - m["heldout_reward_start"]


def test_ppo_learns_a_learnable_reward_and_not_a_shuffled_one(tmp_path, tiny_model):
    (tmp_path / "learn").mkdir()
    (tmp_path / "control").mkdir()
    assert run_recipe(tmp_path / "learn", [ppo_stage(tiny_model, brevity(), rollout_batch_size=BATCH)]) == 0
    assert run_recipe(tmp_path / "control",
                      [ppo_stage(tiny_model, brevity(shuffle=True), rollout_batch_size=BATCH)]) == 0
    rise = {name: heldout_rise(tmp_path / name) for name in ("learn", "control")}
    assert rise["learn"] >= MIN_HELDOUT_RISE and rise["learn"] - rise["control"] >= MIN_GAP, rise
    m = manifest(tmp_path / "learn", "ppo")["metrics"]
    assert m["rewards_unscored"] == 0 and m["rewards_scored"] == ROLLOUTS * BATCH
    logged = rollouts(tmp_path / "learn")
    assert [r["rollout"] for r in logged] == list(range(1, ROLLOUTS + 1))
    assert [r["step"] for r in logged] == [8 * k for k in range(1, ROLLOUTS + 1)]  # 2 epochs × 4 minibatches
    assert logged[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # policy == reference before the first update
    for key in ("reward_std", "entropy", "policy_loss", "value_loss", "clip_fraction", "approx_kl",
                "response_length", "time_generation", "time_scoring", "time_experience", "time_training"):
        assert all(key in r for r in logged), key


def test_unscored_samples_are_counted_and_above_the_threshold_fail_the_stage(tmp_path, tiny_model, capsys):
    failing = {"_component_": "tests.helpers.rewards.CharOverlap", "fail_every": 4}  # every 4th sample: None
    stage = ppo_stage(tiny_model, failing, num_rollouts=2, heldout_prompts=0, max_failed_fraction=0.3)
    assert run_recipe(tmp_path, [stage]) == 0
    m = manifest(tmp_path, "ppo")["metrics"]
    assert (m["rewards_scored"], m["rewards_unscored"]) == (24, 8)
    assert [r["unscored"] for r in rollouts(tmp_path)] == [4, 4]
    assert all("reward_part/overlap" in r for r in rollouts(tmp_path))  # a source's parts are logged

    (tmp_path / "strict").mkdir()
    stage = ppo_stage(tiny_model, failing, num_rollouts=2, heldout_prompts=0, max_failed_fraction=0.2)
    assert run_recipe(tmp_path / "strict", [stage]) == 1
    err = capsys.readouterr().err
    assert "4 of 16 samples could not be scored" in err and "max_failed_fraction=0.2" in err
    assert "deliberately unscored" in err
    assert not (tmp_path / "strict" / "run" / "ppo" / "manifest.json").exists()


def test_unscored_samples_take_no_part_in_the_update(tmp_path, tiny_model):
    # Every sample unscored: had they counted as 0 (or anything), the policy would move; left out, it cannot.
    never = {"_component_": "tests.helpers.rewards.CharOverlap", "fail_every": 1}
    stage = ppo_stage(tiny_model, never, num_rollouts=2, heldout_prompts=0, max_failed_fraction=1.0)
    assert run_recipe(tmp_path, [stage]) == 0
    before = load_file(str(tiny_model / "model.safetensors"))
    after = load_file(str(tmp_path / "run" / "ppo" / "model" / "model.safetensors"))
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert manifest(tmp_path, "ppo")["metrics"]["rewards_unscored"] == 32


def test_lora_policy_uses_the_adapter_disabled_reference_and_saves_an_adapter(tmp_path, tiny_model):
    from rlmed.models.loading import load_causal_lm

    stage = ppo_stage(tiny_model, brevity(), num_rollouts=2, heldout_prompts=4, kl_estimator="k3",
                      lora={"r": 8, "alpha": 16, "dropout": 0.0}, merge=True)
    stage["trainer"]["gradient_checkpointing"] = True  # adapters must still get gradients through checkpoints
    assert run_recipe(tmp_path, [stage]) == 0
    logged = rollouts(tmp_path)
    assert logged[0]["kl"] == pytest.approx(0.0, abs=1e-6) and logged[1]["kl"] > 0  # adapter starts as a no-op
    model_dir = tmp_path / "run" / "ppo" / "model"
    assert (model_dir / "adapter_config.json").exists() and not (model_dir / "model.safetensors").exists()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        adapted = load_causal_lm(str(model_dir))(ids).logits
        merged = load_causal_lm(str(tmp_path / "run" / "ppo" / "merged"))(ids).logits
        base = load_causal_lm(str(tiny_model))(ids).logits
    assert torch.allclose(adapted, merged, atol=1e-5) and not torch.allclose(adapted, base, atol=1e-4)
    m = manifest(tmp_path, "ppo")["metrics"]
    assert m["trainable_parameters"] < m["total_parameters"] / 5
    assert "heldout_reward_end" in m


def test_adaptive_kl_controller_moves_beta_toward_its_target(tmp_path, tiny_model):
    stage = ppo_stage(tiny_model, brevity(), num_rollouts=4, heldout_prompts=0, kl_target=0.01, kl_horizon=64)
    # Micro-batches of 4 accumulated in pairs: the same 4 optimizer steps per rollout as 8 × 1.
    stage["trainer"].update(per_device_train_batch_size=4, gradient_accumulation_steps=2, gradient_checkpointing=True)
    assert run_recipe(tmp_path, [stage]) == 0
    assert [r["step"] for r in rollouts(tmp_path)] == [4, 8, 12, 16]
    betas = [r["kl_coef"] for r in rollouts(tmp_path)]
    # The first rollout's KL is 0 (policy == reference), below target: β shrinks; then KL overshoots: β grows.
    assert betas[1] < betas[0] == 0.01 and betas[-1] > betas[1]


def test_samples_table_holds_prompt_response_reference_reward(tmp_path, tiny_model):
    stage = ppo_stage(tiny_model, {"_component_": "tests.helpers.rewards.CharOverlap"}, num_rollouts=2,
                      heldout_prompts=0, samples_logged=3)
    assert run_recipe(tmp_path, [stage]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "ppo" / "tables" / "samples.jsonl").open(encoding="utf-8")]
    assert [(r["step"], r["rollout"]) for r in rows] == [(4, 1)] * 3 + [(8, 2)] * 3
    assert all(r["prompt"] and r["reference"] and isinstance(r["reward"], float) and r["rationale"] for r in rows)


def test_llm_judge_reward_sees_the_doctor_reply_and_its_verdicts_are_cached(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("RLMED_TEST_JUDGE_KEY", "sk-ppo-test")
    with JudgeServer() as judge:
        judge.script(then=pointwise_reply)
        inner = {"_component_": "reward.judge.LLMJudge", "model": "judge-test", "base_url": judge.base_url,
                 "api_key_env": "RLMED_TEST_JUDGE_KEY", "timeout_s": 10.0}
        # Inside a Composite, the judge still gets the run's judge cache.
        reward = {"_component_": "reward.composite.Composite", "normalize": "none", "sources": [inner]}
        stage = ppo_stage(tiny_model, reward, num_rollouts=2, heldout_prompts=0, samples_logged=16)
        assert run_recipe(tmp_path, [stage]) == 0
        requests = [json.dumps(body, ensure_ascii=False) for body in judge.received]
    assert len(requests) == 2 * 16
    rows = [json.loads(line) for line in (tmp_path / "run" / "ppo" / "tables" / "samples.jsonl").open(encoding="utf-8")]
    assert all(any(r["reference"] in body for body in requests) for r in rows)  # the doctor's reply was shown
    assert all("按参考答案评估" in r["rationale"] for r in rows)
    cached = sum(len(f.read_text(encoding="utf-8").splitlines()) for f in (tmp_path / "run" / "judge_cache").rglob("*.jsonl"))
    assert cached == 32
    assert "sk-ppo-test" not in (tmp_path / "run" / "ppo" / "manifest.json").read_text()


@pytest.mark.parametrize("change, message", [
    ({"args": {"rollout_batch_size": 12}}, "args.rollout_batch_size=12 must be a multiple of"),
    ({"trainer": {"max_steps": 5}}, "trainer.max_steps is derived from args.num_rollouts in a ppo stage; remove it "
                                    "from trainer: (got trainer.max_steps=5)"),
])
def test_batch_settings_that_do_not_fit_are_named(tmp_path, tiny_model, capsys, change, message):
    stage = ppo_stage(tiny_model, brevity())
    for block, values in change.items():
        stage[block].update(values)
    assert run_recipe(tmp_path, [stage]) == 1
    assert message in capsys.readouterr().err


def test_ppo_killed_after_a_checkpoint_resumes_to_the_same_result(tmp_path, tiny_model):
    def stage(kill: bool) -> dict:
        s = ppo_stage(tiny_model, brevity(), num_rollouts=4, heldout_prompts=0, save_every_rollouts=2,
                      kl_target=0.5, kl_horizon=32)  # adaptive: the controller's state must survive too
        if kill:
            s["callbacks"] = [{"_component_": "tests.helpers.callbacks.KillAfterCheckpoint", "step": 8}]
        return s

    def run(name: str, kill: bool, armed: bool) -> subprocess.CompletedProcess:
        recipe = write_recipe(tmp_path / f"{name}.yaml", {"name": name, "run_dir": str(tmp_path / name),
                                                          "defaults": {"seed": 5}, "stages": [stage(kill)]})
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        if armed:
            env["RLMED_TEST_KILL"] = "1"
        return subprocess.run([sys.executable, str(ROOT / "rlmed" / "run.py"), str(recipe)], env=env,
                              capture_output=True, text=True, timeout=300)

    killed = run("killed", kill=True, armed=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    checkpoint = tmp_path / "killed" / "ppo" / "checkpoints" / "checkpoint-8"
    assert (checkpoint / "ppo_state.json").exists() and (checkpoint / "value" / "model.safetensors").exists()
    resumed = run("killed", kill=True, armed=False)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "checkpoint-8 (step 8)" in resumed.stderr
    straight = run("straight", kill=False, armed=False)
    assert straight.returncode == 0, straight.stderr[-2000:]

    def logged(name: str) -> list[dict]:
        return [r for r in read_metrics(tmp_path / name / "ppo") if "reward_mean" in r]

    a, b = logged("killed"), logged("straight")
    assert [r["rollout"] for r in a] == [1, 2, 3, 4] == [r["rollout"] for r in b]
    for ra, rb in zip(a, b):
        for key in ("reward_mean", "kl", "kl_coef", "policy_loss", "value_loss", "entropy"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-6), (ra["rollout"], key)
    wa = load_file(str(tmp_path / "killed" / "ppo" / "model" / "model.safetensors"))
    wb = load_file(str(tmp_path / "straight" / "ppo" / "model" / "model.safetensors"))
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-5
    assert json.loads((tmp_path / "killed" / "ppo" / "manifest.json").read_text())["metrics"]["resumed_from_step"] == 8
