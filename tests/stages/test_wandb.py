"""W&B offline: one run per stage, grouped; logged values read back from the run files match metrics.jsonl;
secrets appear nowhere."""

from __future__ import annotations

import logging
from pathlib import Path

from tests.conftest import read_metrics
from tests.helpers.wandb_records import summarise
from tests.stages.conftest import manifest, run_recipe, sample

SECRET = "sk-rlmed-test-7f3a9c2e5b"


def test_two_stage_recipe_logs_two_grouped_offline_runs_matching_metrics(tmp_path, tiny_model, monkeypatch,
                                                                        caplog):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    stages = [
        {"id": "cpt", "kind": "pretrain", "inputs": {"model": str(tiny_model), "corpus": sample("corpus.jsonl")},
         "args": {"max_length": 64, "num_documents": 200},
         "trainer": {"max_steps": 3, "hub_token": "hf_not_for_anyone_0042"}},
        {"id": "sft", "kind": "sft", "inputs": {"model": "$cpt.model", "data": sample("dialogues.jsonl")},
         "args": {"num_samples": 48}, "trainer": {"max_steps": 3, "max_length": 256}},
    ]
    with caplog.at_level(logging.INFO):
        assert run_recipe(tmp_path, stages, wandb={"project": "rlmed-test", "tags": ["ci"]}) == 0

    run_files = sorted((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(run_files) == 2
    runs = {r["name"]: r for r in map(summarise, run_files)}
    assert set(runs) == {"cpt", "sft"}
    for stage_id, kind in (("cpt", "pretrain"), ("sft", "sft")):
        run = runs[stage_id]
        assert run["group"] == "t" and run["job_type"] == kind  # group = the recipe run's name
        assert run["config"]["kind"] == kind
        # Every metrics.jsonl record is in the W&B history at its step, key by key, value by value.
        logged = {}
        for record in read_metrics(tmp_path / "run" / stage_id):
            logged.setdefault(record["step"], {}).update({k: v for k, v in record.items() if k != "step"})
        assert len(logged) >= 3 and run["history"] == logged
        assert run["summary"]["global_step"] == manifest(tmp_path, stage_id)["metrics"]["global_step"]
    assert runs["cpt"]["config"]["trainer"]["hub_token"] == "***"

    # No secret anywhere: not the environment's API key, not the trainer's token.
    for secret in (SECRET, "hf_not_for_anyone_0042"):
        assert secret not in caplog.text
        for path in Path(tmp_path / "run").rglob("*"):
            if path.is_file() and path.suffix not in (".safetensors", ".bin", ".pt", ".pth"):
                assert secret.encode() not in path.read_bytes(), path


def test_ppo_rollouts_and_samples_table_reach_wandb(tmp_path, tiny_model, monkeypatch):
    from tests.stages.test_ppo import brevity, ppo_stage

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    stage = ppo_stage(tiny_model, brevity(), num_rollouts=2, heldout_prompts=0, samples_logged=2)
    assert run_recipe(tmp_path, [stage], wandb={"project": "rlmed-test"}) == 0
    (run_file,) = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    history = summarise(run_file)["history"]
    # The table arrives flattened into nested keys (samples/_type, samples/nrows, ...).
    assert [history[step]["samples/_type"] for step in (4, 8)] == ["table-file", "table-file"]
    assert history[4]["samples/nrows"] == 2 and history[4]["samples/ncols"] == 6
    for record in read_metrics(tmp_path / "run" / "ppo"):
        if "reward_mean" in record:
            assert history[record["step"]]["reward_mean"] == record["reward_mean"]


def test_wandb_dir_from_the_environment_is_where_runs_land(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))
    stages = [{"id": "cpt", "kind": "pretrain", "inputs": {"model": str(tiny_model), "corpus": sample("corpus.jsonl")},
               "args": {"max_length": 64, "num_documents": 50}, "trainer": {"max_steps": 1}}]
    assert run_recipe(tmp_path, stages, wandb={"project": "rlmed-test"}) == 0
    (run_file,) = (tmp_path / "elsewhere" / "wandb").glob("offline-run-*/run-*.wandb")
    assert summarise(run_file)["name"] == "cpt"
    assert not (tmp_path / "run" / "wandb").exists()
