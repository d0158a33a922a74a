"""LoRA: the artifact is an adapter recording its base; merged and unmerged give the same logits; a LoRA
stage hands its model to a full-parameter stage."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file
from transformers import AutoConfig

from rlmed.models.loading import load_causal_lm
from tests.stages.conftest import manifest, run_recipe, sample


def logits(model_dir) -> torch.Tensor:
    model = load_causal_lm(str(model_dir)).eval()
    with torch.no_grad():
        return model(input_ids=torch.arange(5, 37).unsqueeze(0)).logits


def test_lora_sft_hands_off_to_full_sft_and_merged_equals_unmerged(tmp_path, tiny_model):
    stages = [
        {"id": "lora_sft", "kind": "sft", "inputs": {"model": str(tiny_model), "data": sample("dialogues.jsonl")},
         "args": {"lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}, "merge": True},
         "trainer": {"max_steps": 6, "learning_rate": 5e-3, "max_length": 256}},
        {"id": "full_sft", "kind": "sft", "inputs": {"model": "$lora_sft.model", "data": sample("sharegpt.jsonl")},
         "trainer": {"max_steps": 2, "max_length": 256}},
    ]
    assert run_recipe(tmp_path, stages) == 0
    adapter = tmp_path / "run" / "lora_sft" / "model"
    merged = tmp_path / "run" / "lora_sft" / "merged"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model) and config["r"] == 8
    assert not (adapter / "model.safetensors").exists() and (adapter / "adapter_model.safetensors").exists()
    assert (merged / "model.safetensors").exists() and not (merged / "adapter_config.json").exists()

    from_adapter, from_merged, base = logits(adapter), logits(merged), logits(tiny_model)
    assert torch.allclose(from_adapter, from_merged, atol=1e-5)
    assert not torch.allclose(from_adapter, base, atol=1e-3)  # the adapter really changed the model

    full = manifest(tmp_path, "full_sft")
    assert full["inputs"]["model"] == str(adapter)
    assert (tmp_path / "run" / "full_sft" / "model" / "model.safetensors").exists()  # a full model again
    assert manifest(tmp_path, "lora_sft")["metrics"]["trainable_parameters"] < \
        manifest(tmp_path, "lora_sft")["metrics"]["total_parameters"] * 0.2


def test_lora_pretrain_writes_a_trained_adapter(tmp_path, tiny_model):
    stages = [{"id": "cpt", "kind": "pretrain", "inputs": {"model": str(tiny_model), "corpus": sample("corpus.jsonl")},
               "args": {"max_length": 64, "num_documents": 100,
                        "lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]}},
               "trainer": {"max_steps": 2}}]
    assert run_recipe(tmp_path, stages) == 0
    adapter = tmp_path / "run" / "cpt" / "model"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    assert not (tmp_path / "run" / "cpt" / "merged").exists()
    # peft starts every lora_B at zero (the adapter adds nothing until trained): each one, on every targeted
    # module of every layer, must have moved.
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    lora_b = {key: w for key, w in weights.items() if ".lora_B." in key}
    layers = AutoConfig.from_pretrained(tiny_model).num_hidden_layers
    assert len(lora_b) == 2 * layers, sorted(weights)
    assert all(w.abs().max().item() > 0 for w in lora_b.values()), [k for k, w in lora_b.items() if not w.any()]
