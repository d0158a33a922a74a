"""Adapter chains: an adapter trained on another stage's adapter folder (LoRA, a LoRA reward model, MoLE) reloads
as the model that was trained, with every upstream stage's training in it; and a MoLE model given as a reward or
value model is refused clearly instead of loading as plain LoRA without its routed experts.

The "training" here sets adapter weights to random values (what matters is that they are not zero), and a
zero-initialised adapter (peft's default B = 0) must reload exactly as the folder it was trained on.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from reward.model import RewardModel, RewardModelLoadError, _load_scalar_model
from rlmed.models import mole
from rlmed.models.loading import ModelLoadError, load_causal_lm, load_scalar_head_model
from rlmed.models.lora import LoraSettings, adapter_base, save_merged, wrap
from tests.stages.conftest import run_recipe, sample
from tests.stages.test_reward_model import easy_pairs

IDS = torch.arange(5, 37).unsqueeze(0)
ATOL = 1e-5


def _perturb(model, names: tuple[str, ...], seed: int):
    """Stand-in for training: the named adapter weights set to small random values (B = 0 would be a no-op)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(f".{n}." in name for n in names):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return model


def _lora_stage(start, out, *, seed: int | None, scalar_head: bool = False):
    """What a LoRA stage does: load its input with rlmed, wrap, train (`seed` None: untrained, B = 0), save. Returns
    the in-memory model, in eval mode, as the stage ends with it."""
    load = load_scalar_head_model if scalar_head else load_causal_lm
    settings = LoraSettings(r=4, alpha=8, dropout=0.0)
    model = wrap(load(str(start)), settings, "SEQ_CLS" if scalar_head else "CAUSAL_LM")
    if seed is not None:
        _perturb(model, ("lora_A", "lora_B", "score"), seed)
    model.save_pretrained(str(out))
    return model.eval()


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=IDS).logits


def _backbone(model) -> torch.Tensor:
    """Last hidden states of the transformer under the head (the same module in a causal LM and a scalar head)."""
    with torch.no_grad():
        return getattr(model.eval(), model.base_model_prefix)(input_ids=IDS).last_hidden_state


@pytest.fixture(scope="module")
def stage1(tiny_model, tmp_path_factory):
    """A trained LoRA stage's output folder on the tiny model."""
    out = tmp_path_factory.mktemp("chain") / "stage1"
    _lora_stage(tiny_model, out, seed=1)
    return out


def test_zero_adapter_on_a_lora_output_reloads_as_that_output(stage1, tiny_model, tmp_path):
    stage2 = tmp_path / "stage2"
    _lora_stage(stage1, stage2, seed=None)
    upstream = load_causal_lm(str(stage1))
    assert not torch.allclose(_logits(upstream), _logits(load_causal_lm(str(tiny_model))), atol=1e-3)
    assert adapter_base(stage2) == str(stage1)  # the upstream folder, not its own base

    reloaded = load_causal_lm(str(stage2))
    assert (_logits(reloaded) - _logits(upstream)).abs().max().item() < ATOL
    # A reward or value model started from stage 2 sits on the same backbone.
    scalar = load_scalar_head_model(str(stage2))
    assert (_backbone(scalar) - _backbone(upstream)).abs().max().item() < ATOL


def test_three_lora_stages_reload_and_merge_as_trained(stage1, tiny_tokenizer, tmp_path):
    trained2 = _logits(_lora_stage(stage1, tmp_path / "stage2", seed=2))
    trained3 = _logits(_lora_stage(tmp_path / "stage2", tmp_path / "stage3", seed=3))
    assert not torch.allclose(trained2, trained3, atol=1e-3)
    assert (_logits(load_causal_lm(str(tmp_path / "stage2"))) - trained2).abs().max().item() < ATOL
    assert (_logits(load_causal_lm(str(tmp_path / "stage3"))) - trained3).abs().max().item() < ATOL
    # merge: true writes the whole chain into one standalone model.
    save_merged(tmp_path / "stage3", tmp_path / "merged", tiny_tokenizer)
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    assert (_logits(load_causal_lm(str(tmp_path / "merged"))) - trained3).abs().max().item() < ATOL


def test_lora_reward_model_on_a_lora_output_reloads_as_trained(stage1, tmp_path):
    rm = tmp_path / "rm"
    trained = _logits(_lora_stage(stage1, rm, seed=4, scalar_head=True))
    assert (_logits(load_scalar_head_model(str(rm))) - trained).abs().max().item() < ATOL
    # reward.model.RewardModel has its own loader (reward/ imports nothing from rlmed): the same chain.
    assert (_logits(_load_scalar_model(str(rm), torch.float32)) - trained).abs().max().item() < ATOL


def test_mole_on_a_lora_output_reloads_and_exports_as_trained(stage1, tmp_path):
    model = mole.wrap(load_causal_lm(str(stage1)), mole.MoleSettings(r=4, alpha=8, num_experts=2, dropout=0.0))
    _perturb(model, ("lora_B", "lora_experts_B", "lora_router"), seed=5)
    trained = _logits(model)
    mole.save(model, tmp_path / "experts")
    assert (_logits(load_causal_lm(str(tmp_path / "experts"))) - trained).abs().max().item() < ATOL
    mole.export(tmp_path / "experts", tmp_path / "served")
    assert (_logits(load_causal_lm(str(tmp_path / "served"))) - trained).abs().max().item() < ATOL


def test_lora_stages_chain_through_the_real_stages(tmp_path, tiny_model):
    """sft (LoRA, trained) → sft (LoRA, learning rate 0, merge) → reward_model (LoRA): stage 2's adapter, its
    merged model and the reward model's backbone all reproduce stage 1's model."""
    lora = {"r": 8, "alpha": 16, "dropout": 0.0}
    frozen = {"max_steps": 1, "learning_rate": 0.0, "max_length": 128, "per_device_train_batch_size": 4}
    stages = [
        {"id": "sft1", "kind": "sft", "inputs": {"model": str(tiny_model), "data": sample("dialogues.jsonl")},
         "args": {"lora": lora}, "trainer": {"max_steps": 6, "learning_rate": 5e-3, "max_length": 256}},
        {"id": "sft2", "kind": "sft", "inputs": {"model": "$sft1.model", "data": sample("dialogues.jsonl")},
         "args": {"lora": lora, "merge": True}, "trainer": frozen},
        {"id": "rm", "kind": "reward_model", "inputs": {"model": "$sft2.model", "pairs": str(easy_pairs(
            tmp_path / "pairs.jsonl", n=8))}, "args": {"lora": lora, "validation_fraction": 0.0}, "trainer": frozen},
    ]
    assert run_recipe(tmp_path, stages) == 0
    run = tmp_path / "run"
    stage1 = load_causal_lm(str(run / "sft1" / "model"))
    assert not torch.allclose(_logits(stage1), _logits(load_causal_lm(str(tiny_model))), atol=1e-3)
    for folder in (run / "sft2" / "model", run / "sft2" / "merged"):
        assert (_logits(load_causal_lm(str(folder))) - _logits(stage1)).abs().max().item() < ATOL, folder
    reward_model = load_scalar_head_model(str(run / "rm" / "model"))
    assert (_backbone(reward_model) - _backbone(stage1)).abs().max().item() < ATOL


# ----------------------------------------------------------------------------------------------------------------
# A MoLE model as a reward or value model
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mole_folders(tiny_model, tiny_tokenizer, tmp_path_factory):
    """A MoLE adapter folder with trained (non-zero) experts, as the mole stage writes it, and its serving export."""
    root = tmp_path_factory.mktemp("mole")
    model = mole.wrap(load_causal_lm(str(tiny_model)), mole.MoleSettings(r=4, alpha=8, num_experts=2))
    _perturb(model, ("lora_B", "lora_experts_B", "lora_router"), seed=6)
    mole.save(model, root / "model")
    tiny_tokenizer.save_pretrained(str(root / "model"))
    mole.export(root / "model", root / "merged")
    return root / "model", root / "merged"


@pytest.mark.parametrize("which", ["adapter", "export"])
def test_scalar_head_loading_refuses_a_mole_model(mole_folders, which):
    folder = mole_folders[0 if which == "adapter" else 1]
    with pytest.raises(ModelLoadError, match="routed experts") as refused:
        load_scalar_head_model(str(folder))
    assert f"'{folder}' is a MoLE" in str(refused.value)
    with pytest.raises(RewardModelLoadError, match=f"'{folder}' is a MoLE model"):
        RewardModel(str(folder), device="cpu").load()


def test_scalar_head_loading_refuses_a_mole_model_under_a_lora_adapter(mole_folders, stage1, tmp_path):
    # rlmed cannot train LoRA on a MoLE model (peft refuses a second adapter there), but a hand-made folder can
    # record one as its base: the refusal names it as the bottom of the chain.
    on_mole = tmp_path / "on_mole"
    shutil.copytree(stage1, on_mole)
    config = json.loads((on_mole / "adapter_config.json").read_text())
    (on_mole / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(mole_folders[0])}))
    with pytest.raises(ModelLoadError, match=f"'{mole_folders[0]}' \\(the base of the adapter chain {on_mole}\\)"):
        load_scalar_head_model(str(on_mole))


def test_reward_model_stage_refuses_a_mole_model(mole_folders, tmp_path, capsys):
    stage = {"id": "rm", "kind": "reward_model",
             "inputs": {"model": str(mole_folders[0]), "pairs": str(easy_pairs(tmp_path / "pairs.jsonl", n=8))},
             "args": {"validation_fraction": 0.0}, "trainer": {"max_steps": 1, "max_length": 128}}
    assert run_recipe(tmp_path, [stage]) == 1
    assert f"'{mole_folders[0]}' is a MoLE adapter" in capsys.readouterr().err


def test_an_adapter_chain_that_loops_fails_clearly(stage1, tmp_path):
    looped = tmp_path / "looped"
    shutil.copytree(stage1, looped)
    config = json.loads((looped / "adapter_config.json").read_text())
    (looped / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(looped)}))
    for load in (load_causal_lm, load_scalar_head_model):
        with pytest.raises(ModelLoadError, match="adapter chain loops"):
            load(str(looped))
