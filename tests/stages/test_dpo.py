"""dpo / DFPO: the implicit reward learns distinguishable pairs and not shuffled ones; DFPO's term is applied."""

from __future__ import annotations

import pytest

from tests.conftest import read_metrics
from tests.stages.conftest import manifest, run_recipe
from tests.stages.test_reward_model import varied_pairs


def dpo_stage(model, pairs, **args) -> dict:
    return {"id": "dpo", "kind": "dpo", "inputs": {"model": str(model), "pairs": str(pairs)},
            "args": {"validation_fraction": 0.25, **args},
            "trainer": {"max_steps": 16, "learning_rate": 1e-3, "per_device_train_batch_size": 8, "beta": 0.1,
                        "max_length": 128, "eval_steps": 100}}


@pytest.mark.parametrize("shuffled", [False, True])
def test_dfpo_held_out_reward_accuracy_high_on_real_pairs_near_chance_on_shuffled(tmp_path, tiny_model, shuffled):
    pairs = varied_pairs(tmp_path / "pairs.jsonl", n=128, shuffle_seed=3 if shuffled else None)
    assert run_recipe(tmp_path, [dpo_stage(tiny_model, pairs, nll_weight=0.2)]) == 0
    m = manifest(tmp_path, "dpo")["metrics"]
    assert m["objective"] == "dfpo" and m["eval_pairs"] == 32
    accuracy = m["eval_rewards/accuracies"]
    if shuffled:
        assert abs(accuracy - 0.5) <= 0.25, accuracy
    else:
        assert accuracy >= 0.9 and m["eval_rewards/margins"] > 0, m
    logged = [r for r in read_metrics(tmp_path / "run" / "dpo") if "dfpo_nll" in r]
    assert logged and all(r["dfpo_nll"] > 0 for r in logged)  # the term was computed on every logged step


def test_precomputed_reference_gives_the_same_training(tmp_path, tiny_model):
    pairs = varied_pairs(tmp_path / "pairs.jsonl", n=32)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    stage = dpo_stage(tiny_model, pairs, nll_weight=0.1)
    stage["trainer"]["max_steps"] = 3
    assert run_recipe(tmp_path / "a", [stage]) == 0
    assert run_recipe(tmp_path / "b", [{**stage, "args": {**stage["args"], "precompute_ref": True}}]) == 0
    a = [r["loss"] for r in read_metrics(tmp_path / "a" / "run" / "dpo") if "loss" in r]
    b = [r["loss"] for r in read_metrics(tmp_path / "b" / "run" / "dpo") if "loss" in r]
    assert a == pytest.approx(b, abs=1e-4)


def test_lora_dpo_uses_the_adapter_disabled_reference(tmp_path, tiny_model):
    pairs = varied_pairs(tmp_path / "pairs.jsonl", n=64)
    stage = dpo_stage(tiny_model, pairs, lora={"r": 8, "alpha": 16, "dropout": 0.0})
    stage["trainer"]["max_steps"] = 4
    assert run_recipe(tmp_path, [stage]) == 0
    first = next(r for r in read_metrics(tmp_path / "run" / "dpo") if "rewards/margins" in r)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-6)  # a fresh adapter: policy == reference
    assert (tmp_path / "run" / "dpo" / "model" / "adapter_config.json").exists()
    assert manifest(tmp_path, "dpo")["metrics"]["objective"] == "dpo"
