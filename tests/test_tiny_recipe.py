"""The embedded default recipe, run as the README says (`rlmed run recipes/tiny.yaml`), end to end."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import ROOT, read_metrics

# Final logged loss below this fraction of the first (measured on 2 cores: pretrain ~0.55, sft ~0.43).
LOSS_FRACTION = {"cpt": 0.7, "sft": 0.6}


@pytest.mark.slow
def test_tiny_recipe_runs_end_to_end_and_a_second_run_skips_everything(tmp_path):
    command = ["rlmed", "run", "recipes/tiny.yaml", "--run-dir", str(tmp_path / "run")]
    first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]

    for stage, kind in (("base", "tiny_model"), ("kb", "kb_instructions"), ("cpt", "pretrain"), ("sft", "sft")):
        manifest = json.loads((tmp_path / "run" / stage / "manifest.json").read_text())
        assert manifest["kind"] == kind
        if kind != "kb_instructions":
            assert (tmp_path / "run" / stage / "model" / "model.safetensors").exists()
    feedback = json.loads((tmp_path / "run" / "feedback" / "manifest.json").read_text())["metrics"]
    assert feedback["candidates"] == 48 * 4 and feedback["failed_scores"] == 0 and feedback["pairs"] > 0
    rm = json.loads((tmp_path / "run" / "rm" / "manifest.json").read_text())["metrics"]
    assert rm["train_pairs"] + rm["eval_pairs"] == feedback["pairs"] and 0.0 <= rm["eval_pairwise_accuracy"] <= 1.0
    ppo = json.loads((tmp_path / "run" / "ppo" / "manifest.json").read_text())
    assert ppo["metrics"]["rewards_unscored"] == 0 and ppo["metrics"]["value_model_from"].endswith("rm/model")
    assert "reward:$rm.model" in ppo["input_hashes"]
    assert (tmp_path / "run" / "ppo" / "tables" / "samples.jsonl").exists()
    grpo = json.loads((tmp_path / "run" / "grpo" / "manifest.json").read_text())
    assert grpo["metrics"]["rewards_unscored"] == 0 and "reward:$rm.model" in grpo["input_hashes"]
    dfpo = json.loads((tmp_path / "run" / "dfpo" / "manifest.json").read_text())["metrics"]
    assert dfpo["objective"] == "dfpo" and "eval_rewards/accuracies" in dfpo
    experts = json.loads((tmp_path / "run" / "experts" / "manifest.json").read_text())["metrics"]
    assert experts["tasks"] == 3 and experts["routing_task_distance_end"] > experts["routing_task_distance_start"]
    assert (tmp_path / "run" / "experts" / "model" / "mole_config.json").exists()
    assert (tmp_path / "run" / "experts" / "merged" / "experts" / "mole_config.json").exists()
    results = json.loads((tmp_path / "run" / "eval" / "results.json").read_text())
    assert set(results["models"]) == {"base", "sft", "ppo", "dfpo", "experts"}
    assert results["metrics"]["sft"]["heldout_prompts/rouge_l"] > results["metrics"]["base"]["heldout_prompts/rouge_l"]
    assert (tmp_path / "run" / "eval" / "report.md").exists()
    kb = json.loads((tmp_path / "run" / "kb" / "manifest.json").read_text())["metrics"]
    assert kb["pairs_written"] == 2 * 16 + 3 * 20  # two drug templates x 16 drugs, three disease ones x 20
    for stage, fraction in LOSS_FRACTION.items():
        losses = [r["loss"] for r in read_metrics(tmp_path / "run" / stage) if "loss" in r]
        assert losses[-1] < fraction * losses[0], (stage, losses[0], losses[-1])
        assert "eval_loss" in json.loads((tmp_path / "run" / stage / "manifest.json").read_text())["metrics"]
    assert "stage sft (sft) done in" in first.stderr  # the one-line stage summary

    second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0
    assert second.stderr.count("skipped, up to date") == 11
