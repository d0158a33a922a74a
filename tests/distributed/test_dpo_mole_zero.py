"""DFPO under ZeRO-3 and MoLE under ZeRO-2 and ZeRO-3 (with gradient checkpointing), on 2 CPU ranks through
the real deepspeed launcher in one launch; the saved models reload in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import SAMPLE, read_metrics
from tests.distributed.conftest import ZERO2, ZERO3, launch, launcher_env, manifest, recipe_file, tail
from tests.stages.test_mole import two_task_data
from tests.stages.test_reward_model import varied_pairs


def test_dfpo_zero3_and_mole_zero2_zero3_on_two_ranks(tmp_path, tiny_model):
    pairs = varied_pairs(tmp_path / "pairs.jsonl", n=48)
    tasks = two_task_data(tmp_path / "tasks.jsonl", n=48)
    mole_args = {"r": 4, "alpha": 8, "num_experts": 3, "routing_every": 2, "routing_rows_per_task": 4,
                 "validation_fraction": 0.0}
    trainer = {"max_steps": 4, "learning_rate": 5e-3, "per_device_train_batch_size": 4, "max_length": 128,
               "save_steps": 100}
    stages = [
        {"id": "dfpo", "kind": "dpo", "inputs": {"model": str(tiny_model), "pairs": str(pairs)},
         "args": {"nll_weight": 0.2, "validation_fraction": 0.0},
         "trainer": {**trainer, "learning_rate": 1e-3, "deepspeed": ZERO3}},
        {"id": "experts_z2", "kind": "mole", "inputs": {"model": "$dfpo.model", "data": str(tasks)},
         "args": {**mole_args, "aux_loss_coef": 0.01},
         "trainer": {**trainer, "deepspeed": ZERO2, "gradient_checkpointing": False}},
        {"id": "experts_z3", "kind": "mole", "inputs": {"model": "$dfpo.model", "data": str(tasks)},
         "args": {**mole_args, "merge": True},
         "trainer": {**trainer, "deepspeed": ZERO3, "gradient_checkpointing": True}},
        # Generation and reward scoring sharded over both ranks, merged in row order by the main rank.
        {"id": "eval", "kind": "evaluate", "inputs": {"models": ["$dfpo.model", "$experts_z3.model"],
                                                     "data": [str(SAMPLE / "heldout_prompts.jsonl")]},
         "args": {"max_new_tokens": 8, "max_rows": 5},
         "reward": {"_component_": "reward.rules.Rules", "max_chars": 12, "length_penalty": 0.5}},
    ]
    result = launch(recipe_file(tmp_path, "pref", stages), ranks=2, timeout=600)
    assert result.returncode == 0, tail(result)
    for stage_id in ("dfpo", "experts_z2", "experts_z3"):
        m = manifest(tmp_path / "pref" / stage_id)
        assert m["world_size"] == 2 and m["metrics"]["global_step"] == 4, stage_id
    assert any("dfpo_nll" in r for r in read_metrics(tmp_path / "pref" / "dfpo"))
    for stage_id in ("experts_z2", "experts_z3"):
        routing = [r for r in read_metrics(tmp_path / "pref" / stage_id) if "routing/task_distance" in r]
        assert [r["step"] for r in routing] == [0, 2, 4], stage_id
    assert manifest(tmp_path / "pref" / "experts_z3")["metrics"]["total_parameters"] > 100_000  # not 0 when sharded
    generations = tmp_path / "pref" / "eval" / "generations"
    merged = [json.loads(line) for line in (generations / "experts_z3.jsonl").open(encoding="utf-8")]
    assert [r["index"] for r in merged] == [0, 1, 2, 3, 4]  # rank 0 answered 0, 2, 4 and rank 1 answered 1, 3
    rank1 = [json.loads(line) for line in (generations / "experts_z3.rank1.jsonl").open(encoding="utf-8")]
    assert [r["index"] for r in rank1] == [1, 3]
    # Rank 1 scored its own rows (its shard file has the scores), and the saved rows give the reported means.
    assert all(isinstance(r["reward"], float) for r in rank1) and all(isinstance(r["reward"], float) for r in merged)
    results = json.loads((tmp_path / "pref" / "eval" / "results.json").read_text(encoding="utf-8"))
    mean = sum(r["reward"] for r in merged) / len(merged)
    assert abs(results["reward"]["experts_z3"]["heldout_prompts/reward_mean"] - mean) < 1e-9
    assert manifest(tmp_path / "pref" / "eval")["metrics"]["models"] == 2

    # Fresh process: the DFPO model, both adapters (base = the DFPO model) and the ZeRO-3 export all load; the
    # export reproduces its adapter's logits.
    check = (
        "import sys, torch; from rlmed.models.loading import load_causal_lm\n"
        "ids = torch.arange(3, 19).unsqueeze(0)\n"
        "def logits(p):\n"
        "    with torch.no_grad(): return load_causal_lm(p).eval()(ids).logits\n"
        "dfpo, base = logits(sys.argv[1]), logits(sys.argv[5])\n"
        "assert torch.isfinite(dfpo).all() and not torch.allclose(dfpo, base, atol=1e-5)\n"
        "z2, z3, served = logits(sys.argv[2]), logits(sys.argv[3]), logits(sys.argv[4])\n"
        "assert not torch.allclose(z2, dfpo, atol=1e-5) and not torch.allclose(z3, dfpo, atol=1e-5)\n"
        "assert torch.allclose(z3, served, atol=1e-5), (z3 - served).abs().max()\n"
    )
    run = tmp_path / "pref"
    paths = [run / "dfpo" / "model", run / "experts_z2" / "model", run / "experts_z3" / "model",
             run / "experts_z3" / "merged", tiny_model]
    fresh = subprocess.run([sys.executable, "-c", check, *map(str, paths)], capture_output=True, text=True,
                           timeout=180, env=launcher_env())
    assert fresh.returncode == 0, fresh.stderr[-3000:]
