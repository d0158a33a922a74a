"""reward_model on pairs: trains, reports held-out accuracy and margin, loads as a RewardModel, gates."""

from __future__ import annotations

import pytest

from reward.base import Sample, score_sync
from reward.model import RewardModel
from tests.conftest import write_jsonl
from tests.stages.conftest import manifest, run_recipe, sample

GOOD = "孩子发烧先观察精神状态，多喝水，体温超过38.5度可以用对乙酰氨基酚，持续三天不退或抽搐请及时就医。"
BAD = "不知道。"

# Learning bars, from the held-out metrics of these tests' stages over recipe seeds 1-4 (this machine): on
# learnable pairs (easy, varied, and LoRA) accuracy 1.0 every time, mean margins 3.7-4.3; on varied pairs with
# shuffled labels (shuffle seeds 7-10) accuracy 0.50-0.72 (32 coin flips: 0.5 ± 0.09), mean margins 0.0005-0.011.
MIN_ACCURACY = 0.9
MIN_MARGIN = 1.0
SHUFFLED_MAX_MARGIN = 0.3


def easy_pairs(path, n: int = 64, swapped_share: float = 0.0):
    """Pairs a tiny model can learn: the careful answer is chosen; `swapped_share` of them the other way round."""
    rows = []
    for i in range(n):
        prompt = [{"role": "user", "content": f"医生，孩子{i % 7 + 1}岁，发烧了怎么办？"}]
        chosen, rejected = (BAD, GOOD) if i < n * swapped_share else (GOOD, BAD)
        rows.append({"messages": prompt, "chosen": chosen, "rejected": rejected})
    return write_jsonl(path, rows)


def rm_stage(model, pairs, **args) -> dict:
    return {"id": "rm", "kind": "reward_model", "inputs": {"model": str(model), "pairs": str(pairs)},
            "args": {"validation_fraction": 0.25, **args},
            "trainer": {"max_steps": 20, "learning_rate": 2e-3, "per_device_train_batch_size": 8,
                        "max_length": 128}}


def test_reward_model_learns_easy_pairs_and_loads_as_a_reward_source(tmp_path, tiny_model):
    stage = rm_stage(tiny_model, easy_pairs(tmp_path / "pairs.jsonl"), min_accuracy=MIN_ACCURACY)
    assert run_recipe(tmp_path, [stage]) == 0
    metrics = manifest(tmp_path, "rm")["metrics"]
    # Every held-out pair is the same two answers, so accuracy is all or nothing: 1.0 at every seed measured.
    assert metrics["eval_pairs"] == 16 and metrics["eval_pairwise_accuracy"] == 1.0
    assert metrics["eval_mean_margin"] >= MIN_MARGIN and metrics["train_pairs"] == 48
    source = RewardModel(str(tmp_path / "run" / "rm" / "model"))
    prompt = [{"role": "user", "content": "孩子发烧了怎么办？"}]
    good, bad = score_sync(source, [Sample(prompt=prompt, completion=GOOD), Sample(prompt=prompt, completion=BAD)])
    assert good.value > bad.value


def test_min_accuracy_gate_fails_the_stage_before_later_stages(tmp_path, tiny_model, capsys):
    # Held-out pairs are half one way, half the other: no model can exceed 0.5 accuracy on them.
    pairs = easy_pairs(tmp_path / "pairs.jsonl", n=64, swapped_share=0.5)
    stage = rm_stage(tiny_model, pairs, min_accuracy=0.75, num_samples=64)
    # The stage the gate protects: PPO scored by this reward model (kept small, in case it ever runs).
    ppo = {"id": "ppo", "kind": "ppo",
           "inputs": {"model": str(tiny_model), "prompts": sample("doctor_dialogues.jsonl")},
           "args": {"max_prompts": 8, "heldout_prompts": 0, "num_rollouts": 1, "rollout_batch_size": 8,
                    "max_new_tokens": 8},
           "reward": {"_component_": "reward.model.RewardModel", "path": "$rm.model"},
           "trainer": {"per_device_train_batch_size": 8}}
    assert run_recipe(tmp_path, [stage, ppo]) == 1
    assert "is below min_accuracy=0.75" in capsys.readouterr().err
    assert not (tmp_path / "run" / "rm" / "manifest.json").exists()
    assert (tmp_path / "run" / "rm" / "model").is_dir()  # kept for inspection, as the error says
    assert not (tmp_path / "run" / "ppo").exists()  # never started


def varied_pairs(path, n: int, shuffle_seed: int | None = None):
    """A careful answer against a curt one, worded differently on every row; with `shuffle_seed`, each pair's
    sides are swapped by a coin flip, so the labels carry no signal."""
    import random

    rng = random.Random(shuffle_seed)
    rows = []
    for i in range(n):
        age, days = i % 9 + 1, i % 4 + 1
        prompt = [{"role": "user", "content": f"孩子{age}岁，咳嗽{days}天了，需要怎么处理？"}]
        good = f"{age}岁孩子咳嗽{days}天，先观察精神和呼吸，多喝温水，夜间抬高枕头；如果气促、高热或超过一周不好，请及时就医。"
        bad = ["随便。", "不清楚。", "多喝水。", "没事。"][i % 4]
        chosen, rejected = (good, bad) if shuffle_seed is None or rng.random() < 0.5 else (bad, good)
        rows.append({"messages": prompt, "chosen": chosen, "rejected": rejected})
    return write_jsonl(path, rows)


@pytest.mark.parametrize("shuffled", [False, True])
def test_held_out_accuracy_is_high_on_real_labels_and_near_chance_on_shuffled_ones(tmp_path, tiny_model, shuffled):
    pairs = varied_pairs(tmp_path / "pairs.jsonl", n=128, shuffle_seed=7 if shuffled else None)
    assert run_recipe(tmp_path, [rm_stage(tiny_model, pairs)]) == 0  # 32 pairs held out
    metrics = manifest(tmp_path, "rm")["metrics"]
    accuracy, margin = metrics["eval_pairwise_accuracy"], metrics["eval_mean_margin"]
    if shuffled:  # the margin is the sharper control: accuracy on coin-flip labels wanders (0.72 at one seed)
        assert abs(accuracy - 0.5) <= 0.3 and abs(margin) <= SHUFFLED_MAX_MARGIN, (accuracy, margin)
    else:
        assert accuracy >= MIN_ACCURACY and margin >= MIN_MARGIN, (accuracy, margin)


def test_lora_reward_model_trains_and_saves_its_scalar_head(tmp_path, tiny_model):
    from safetensors.torch import load_file

    stage = rm_stage(tiny_model, easy_pairs(tmp_path / "pairs.jsonl"), lora={"r": 8, "alpha": 16}, merge=True)
    assert run_recipe(tmp_path, [stage]) == 0
    adapter = load_file(str(tmp_path / "run" / "rm" / "model" / "adapter_model.safetensors"))
    assert any(".score." in key for key in adapter), sorted(adapter)[:5]  # the new head is not left at random
    metrics = manifest(tmp_path, "rm")["metrics"]
    assert metrics["eval_pairwise_accuracy"] >= MIN_ACCURACY and metrics["eval_mean_margin"] >= MIN_MARGIN, metrics
    # The adapter folder and the merged folder both load as a RewardModel source, and score alike.
    prompt = [{"role": "user", "content": "孩子发烧了怎么办？"}]
    samples = [Sample(prompt=prompt, completion=GOOD), Sample(prompt=prompt, completion=BAD)]
    adapter_scores = [s.value for s in score_sync(RewardModel(str(tmp_path / "run" / "rm" / "model")), samples)]
    merged_scores = [s.value for s in score_sync(RewardModel(str(tmp_path / "run" / "rm" / "merged")), samples)]
    assert adapter_scores == pytest.approx(merged_scores, abs=1e-4) and adapter_scores[0] > adapter_scores[1]
