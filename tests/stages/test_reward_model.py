"""reward_model on pairs: trains, reports held-out accuracy and margin, loads as a RewardModel, gates."""

from __future__ import annotations

from reward.base import Sample, score_sync
from reward.model import RewardModel
from tests.conftest import write_jsonl
from tests.stages.conftest import manifest, run_recipe

GOOD = "孩子发烧先观察精神状态，多喝水，体温超过38.5度可以用对乙酰氨基酚，持续三天不退或抽搐请及时就医。"
BAD = "不知道。"


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
    assert run_recipe(tmp_path, [rm_stage(tiny_model, easy_pairs(tmp_path / "pairs.jsonl"), min_accuracy=0.9)]) == 0
    metrics = manifest(tmp_path, "rm")["metrics"]
    assert metrics["eval_pairs"] == 16 and metrics["eval_pairwise_accuracy"] == 1.0
    assert metrics["eval_mean_margin"] > 0 and metrics["train_pairs"] == 48
    source = RewardModel(str(tmp_path / "run" / "rm" / "model"))
    prompt = [{"role": "user", "content": "孩子发烧了怎么办？"}]
    good, bad = score_sync(source, [Sample(prompt=prompt, completion=GOOD), Sample(prompt=prompt, completion=BAD)])
    assert good.value > bad.value


def test_min_accuracy_gate_fails_the_stage_before_later_stages(tmp_path, tiny_model, capsys):
    # Held-out pairs are half one way, half the other: no model can exceed 0.5 accuracy on them.
    pairs = easy_pairs(tmp_path / "pairs.jsonl", n=64, swapped_share=0.5)
    stage = rm_stage(tiny_model, pairs, min_accuracy=0.75, num_samples=64)
    assert run_recipe(tmp_path, [stage]) == 1
    assert "is below min_accuracy=0.75" in capsys.readouterr().err
    assert not (tmp_path / "run" / "rm" / "manifest.json").exists()
