"""The command line: dry runs of the shipped recipes, exit codes, the script entry point."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rlmed.cli import main
from tests.conftest import ROOT

PEDIATRICS_DATA = {"data/peds_corpus.jsonl", "data/general_corpus.jsonl", "data/peds_qa.jsonl",
                   "data/peds_sft.jsonl", "data/general_sft.jsonl", "data/peds_behaviour.jsonl",
                   "data/peds_dialogues.jsonl", "data/peds_tasks.jsonl", "data/peds_test.jsonl",
                   "data/peds_mcq.jsonl"}
HUATUO_DATA = {"data/huatuo_distilled.jsonl", "data/huatuo_doctor.jsonl", "data/huatuo_consultations.jsonl"}


@pytest.mark.parametrize("recipe, absent", [("pediatrics", PEDIATRICS_DATA), ("huatuo_rlaif", HUATUO_DATA)])
def test_full_size_dry_run_reports_only_the_absent_user_data_files(monkeypatch, capsys, recipe, absent):
    monkeypatch.chdir(ROOT)
    assert main(["run", f"recipes/{recipe}.yaml", "--dry-run"]) == 2
    problems = [line.strip() for line in capsys.readouterr().err.splitlines()[1:] if line.strip()]
    assert problems, "the absent data files must be reported"
    reported = set()
    for line in problems:
        # Every problem is a missing data file (one line per stage that reads it); nothing else is wrong.
        assert line.startswith(f"recipes/{recipe}.yaml: stage '") and ": data file not found: '" in line, line
        reported.add(line.split("data file not found: '")[1].split("'")[0])
    assert reported == absent  # the 7B Hub id, the DeepSpeed config, trainer fields, the judge: all fine


def test_public_data_recipe_validates_offline_with_hub_configs_and_splits(monkeypatch, capsys, tmp_path):
    """recipes/public_medical.yaml names only Hub datasets and models: its dry run needs no network and no file."""
    monkeypatch.chdir(ROOT)
    assert main(["run", "recipes/public_medical.yaml", "--dry-run", "--run-dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    for stage in ("cpt (pretrain)", "sft (sft)", "rm (reward_model)", "grpo (grpo)", "dpo (dpo)", "eval (evaluate)"):
        assert f"] {stage}:" in out
    assert "in  pairs: shibing624/medical" in out and "in  data: FreedomIntelligence/CMB" in out
    from rlmed.recipe import load_recipe

    recipe = load_recipe(ROOT / "recipes" / "public_medical.yaml")
    pairs = recipe.stage("rm").inputs["pairs"][0]
    assert (pairs.config, pairs.split, pairs.is_local) == ("reward", "train", False)
    assert pairs.columns == {"prompt": "question", "chosen": "response_chosen", "rejected": "response_rejected"}
    assert recipe.stage("eval").inputs["data"][0].split == "val"
    assert not (tmp_path / "run").exists()


def test_tiny_dry_run_plans_every_stage_and_loads_nothing(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(ROOT)
    assert main(["run", "recipes/tiny.yaml", "--dry-run", "--run-dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    for line in ("[run] base (tiny_model): not run yet", "[run] kb (kb_instructions): not run yet",
                 "[run] cpt (pretrain): upstream stage base re-runs", "[run] sft (sft): upstream stage cpt, kb re-runs",
                 "[run] feedback (ai_feedback): upstream stage sft re-runs",
                 "[run] rm (reward_model): upstream stage feedback, sft re-runs",
                 "[run] ppo (ppo): upstream stage rm, sft re-runs", "[run] grpo (grpo): upstream stage sft re-runs",
                 "[run] dfpo (dpo): upstream stage feedback, sft re-runs",
                 "[run] experts (mole): upstream stage dfpo, kb re-runs",
                 "[run] eval (evaluate): upstream stage base, dfpo, experts, grpo, ppo, sft re-runs",
                 f"in  model: {tmp_path / 'run' / 'base' / 'model'}"):
        assert line in out
    assert "weight 4.5" in out
    assert not (tmp_path / "run").exists()


def test_script_entry_accepts_local_rank_and_dry_run(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "rlmed" / "run.py"), "recipes/tiny.yaml", "--dry-run", "--local_rank=0",
         "--run-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "[run] sft (sft)" in result.stdout


def test_missing_recipe_file_exits_2(capsys):
    assert main(["run", "no/such/recipe.yaml"]) == 2
    assert "no/such/recipe.yaml: recipe file not found" in capsys.readouterr().err
