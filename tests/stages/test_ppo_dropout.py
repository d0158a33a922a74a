"""PPO's update forwards see the same function as the rollout's (issue 14, defect 3).

Old log-probs and values are computed in eval mode; the update runs in train mode (the Trainer calls
model.train(), and eval mode would switch gradient checkpointing off). With dropout left on — LoRA's 0.05 by
default, a model's attention/hidden dropout — the ratio π/π_old at the very weights that produced π_old was
not 1, so the first minibatch already clipped and paid a KL that was only noise.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.stages.test_ppo import brevity, ppo_stage, rollouts
from tests.stages.conftest import run_recipe

DROPOUT = 0.3  # large, so that any dropout left on shows far above float noise


def with_attention_dropout(model_dir, out):
    shutil.copytree(model_dir, out)
    path = out / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["attention_dropout"] = DROPOUT
    path.write_text(json.dumps(config), encoding="utf-8")
    return out


def test_first_minibatch_ratio_is_exactly_one_with_dropout_configured(tmp_path, tiny_model):
    model = with_attention_dropout(tiny_model, tmp_path / "dropout_model")
    # One rollout of 8, one epoch, micro-batch 8: the only update forward runs at the rollout's own weights.
    stage = ppo_stage(model, brevity(), num_rollouts=1, rollout_batch_size=8, ppo_epochs=1, max_prompts=8,
                      heldout_prompts=0)
    assert run_recipe(tmp_path, [stage]) == 0
    (logged,) = rollouts(tmp_path)
    assert logged["clip_fraction"] == 0.0
    assert logged["approx_kl"] == pytest.approx(0.0, abs=1e-12)  # E[r - 1 - log r]: 0 only when every r is 1
    assert logged["ratio_error_before_update"] <= 1e-6
    saved = json.loads((tmp_path / "run" / "ppo" / "model" / "config.json").read_text(encoding="utf-8"))
    assert saved["attention_dropout"] == DROPOUT  # the saved model keeps its configuration


def test_lora_policy_and_value_model_forward_the_same_in_train_and_eval_mode(tmp_path, tiny_model):
    """LoRA's dropout sits before lora_A, so it shows only once lora_B is non-zero (not at a fresh adapter):
    checked here on the trainer's own module, with the adapters' B matrices made non-zero."""
    from transformers import TrainingArguments

    from rlmed.models.loading import load_causal_lm, load_scalar_head_model, load_tokenizer
    from rlmed.models.lora import LoraSettings, wrap
    from rlmed.rl.ppo_trainer import PPOTrainer
    from rlmed.stages.ppo import Args

    model = with_attention_dropout(tiny_model, tmp_path / "dropout_model")
    tokenizer = load_tokenizer(str(model))
    lora = LoraSettings(r=4, alpha=8, dropout=DROPOUT)
    policy = wrap(load_causal_lm(str(model), dtype="float32"), lora)
    value = wrap(load_scalar_head_model(str(model), dtype="float32", pad_token_id=tokenizer.pad_token_id), lora,
                 task_type="SEQ_CLS")
    torch.manual_seed(0)
    for name, param in [*policy.named_parameters(), *value.named_parameters()]:
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    config = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, use_cpu=True,
                               report_to=[], max_steps=1)
    trainer = PPOTrainer(policy=policy, value_model=value, ref_model=None, settings=Args(rollout_batch_size=8),
                         prompts=[{"ids": [5, 6, 7], "messages": [], "reference": None}], reward_source=None,
                         tokenizer=tokenizer, args=config)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
    mask, positions = torch.ones_like(ids), torch.arange(ids.shape[1]).unsqueeze(0)
    with torch.no_grad():
        trainer.model.eval()
        eval_logits, eval_values = trainer.model(ids, mask, positions)
        trainer.model.train()  # what the Trainer and the PPO step do before every update forward
        train_logits, train_values = trainer.model(ids, mask, positions)
    assert torch.equal(train_logits, eval_logits)
    assert torch.equal(train_values, eval_values)
