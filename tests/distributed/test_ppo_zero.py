"""PPO under the real deepspeed launcher with 2 CPU ranks: ZeRO-3 (full policy, then LoRA) and ZeRO-2, with a
reward model as the reward source, in one launch; the saved policies reload in a fresh process."""

from __future__ import annotations

import subprocess
import sys

import torch

from tests.conftest import SAMPLE, read_metrics
from tests.distributed.conftest import ZERO2, ZERO3, launch, launcher_env, manifest, recipe_file, tail

ROLLOUTS, PER_RANK = 2, 8


def ppo_stage(stage_id: str, model: str, deepspeed: str, reward_model: str, **args) -> dict:
    return {"id": stage_id, "kind": "ppo",
            "inputs": {"model": model, "prompts": str(SAMPLE / "doctor_dialogues.jsonl")},
            "args": {"max_prompts": 48, "num_rollouts": ROLLOUTS, "rollout_batch_size": PER_RANK, "ppo_epochs": 2,
                     "max_new_tokens": 16, "save_every_rollouts": 1, **args},
            # Loaded whole on each rank even while ZeRO-3 partitions the policy (it runs its own forward).
            "reward": {"_component_": "reward.model.RewardModel", "path": reward_model},
            "trainer": {"learning_rate": 1e-3, "per_device_train_batch_size": 4, "deepspeed": deepspeed}}


def reward_model_folder(tiny_model, path):
    """A scalar-head model on the tiny backbone, saved as the reward_model stage saves one."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_ppo_zero3_full_and_lora_and_zero2_on_two_ranks(tmp_path, tiny_model):
    rm = reward_model_folder(tiny_model, tmp_path / "rm")
    z3 = ppo_stage("ppo_z3", str(tiny_model), ZERO3, rm)
    z3["inputs"]["value_model"] = rm  # HuatuoGPT's choice: the critic starts as the reward model
    stages = [z3,
              ppo_stage("ppo_z3_lora", "$ppo_z3.model", ZERO3, rm, lora={"r": 4, "alpha": 8, "dropout": 0.0}),
              ppo_stage("ppo_z2", str(tiny_model), ZERO2, rm, kl_estimator="k3")]
    result = launch(recipe_file(tmp_path, "ppo", stages), ranks=2, timeout=600)
    assert result.returncode == 0, tail(result)

    for stage_id in ("ppo_z3", "ppo_z3_lora", "ppo_z2"):
        stage_dir = tmp_path / "ppo" / stage_id
        m = manifest(stage_dir)
        assert m["world_size"] == 2
        assert m["metrics"]["total_parameters"] > 100_000  # counted in full although partitioned
        # Both ranks generated and scored their own prompts every rollout.
        assert m["metrics"]["rewards_scored"] == ROLLOUTS * PER_RANK * 2, stage_id
        rollouts = [r for r in read_metrics(stage_dir) if "reward_mean" in r]
        assert [r["rollout"] for r in rollouts] == [1, 2]
        assert abs(rollouts[0]["kl"]) < 1e-5  # policy == reference before any update, also when partitioned
        assert (stage_dir / "checkpoints" / "checkpoint-4" / "ppo_state.json").exists()

    # The saved policies load in a fresh process: full weights (ZeRO-3 gathered at save) and an adapter.
    reload = (
        "import sys, torch; from rlmed.models.loading import load_causal_lm\n"
        "base = load_causal_lm(sys.argv[1]).eval(); ids = torch.arange(3, 19).unsqueeze(0)\n"
        "for path in sys.argv[2:]:\n"
        "    with torch.no_grad(): a, b = load_causal_lm(path).eval()(ids).logits, base(ids).logits\n"
        "    assert torch.isfinite(a).all() and not torch.allclose(a, b, atol=1e-5), path\n"
    )
    trained = [str(tmp_path / "ppo" / s / "model") for s in ("ppo_z3", "ppo_z3_lora", "ppo_z2")]
    fresh = subprocess.run([sys.executable, "-c", reload, str(tiny_model), *trained], capture_output=True, text=True,
                           timeout=120, env=launcher_env())
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert (tmp_path / "ppo" / "ppo_z3_lora" / "model" / "adapter_config.json").exists()
