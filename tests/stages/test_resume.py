"""Resume on a 2-stage recipe (pretrain -> sft): skip when done, re-run what changed, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from rlmed.data.prepared import DataCache
from tests.conftest import ROOT, read_metrics, write_recipe
from tests.stages.conftest import run_recipe, sample


def two_stages(model: Path, sft_lr: float = 1e-3, cpt_lr: float = 1e-3) -> list[dict]:
    return [
        {"id": "cpt", "kind": "pretrain",
         "inputs": {"model": str(model), "corpus": sample("corpus.jsonl")},
         "args": {"max_length": 64, "num_documents": 200},
         "trainer": {"max_steps": 4, "learning_rate": cpt_lr}},
        {"id": "sft", "kind": "sft",
         "inputs": {"model": "$cpt.model", "data": sample("dialogues.jsonl")},
         "args": {"num_samples": 64},
         "trainer": {"max_steps": 4, "learning_rate": sft_lr, "max_length": 256}},
    ]


def manifests(tmp_path: Path) -> dict[str, bytes]:
    return {s: (tmp_path / "run" / s / "manifest.json").read_bytes() for s in ("cpt", "sft")}


def test_second_run_skips_both_and_a_changed_arg_reruns_only_what_depends_on_it(tmp_path, tiny_model, caplog):
    assert run_recipe(tmp_path, two_stages(tiny_model)) == 0
    first = manifests(tmp_path)

    caplog.clear()
    with caplog.at_level("INFO", logger="rlmed"):
        assert run_recipe(tmp_path, two_stages(tiny_model)) == 0
    assert manifests(tmp_path) == first
    assert "stage cpt (pretrain): skipped, up to date" in caplog.text
    assert "stage sft (sft): skipped, up to date" in caplog.text

    assert run_recipe(tmp_path, two_stages(tiny_model, sft_lr=5e-4)) == 0  # only sft changed
    second = manifests(tmp_path)
    assert second["cpt"] == first["cpt"] and second["sft"] != first["sft"]

    assert run_recipe(tmp_path, two_stages(tiny_model, sft_lr=5e-4, cpt_lr=5e-4)) == 0  # cpt, so both
    third = manifests(tmp_path)
    assert third["cpt"] != second["cpt"] and third["sft"] != second["sft"]
    reason = json.loads(third["sft"])["input_hashes"]["model"]
    assert reason != json.loads(second["sft"])["input_hashes"]["model"]


KILLED_STAGES = {
    # A corpus of two files, tokenised by two worker processes (RLMED_DATA_NUM_PROC below): Arrow shards.
    "pretrain": {"inputs": {"corpus": [sample("corpus.jsonl"), sample("instructions.jsonl")]},
                 "args": {"max_length": 64, "num_documents": 200}},
    "sft": {"inputs": {"data": sample("dialogues.jsonl")}, "args": {"num_samples": 96},
            "trainer": {"max_length": 256}},
}


def killable_stage(model: Path, kind: str, kill: bool) -> dict:
    """8 steps with checkpoints at 4 and 8; with `kill`, a SIGKILL right after checkpoint-4 (when armed)."""
    spec = KILLED_STAGES[kind]
    stage = {"id": "cpt", "kind": kind, "inputs": {"model": str(model), **spec["inputs"]},
             "args": {**spec["args"], "validation_fraction": 0},
             "trainer": {"max_steps": 8, "save_steps": 4, "learning_rate": 1e-3, "logging_steps": 1,
                         **spec.get("trainer", {})}}
    if kill:
        stage["callbacks"] = [{"_component_": "tests.helpers.callbacks.KillAfterCheckpoint", "step": 4}]
    return stage


def run_in_subprocess(recipe: Path, armed: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RLMED_DATA_NUM_PROC": "2"}
    if armed:
        env["RLMED_TEST_KILL"] = "1"
    return subprocess.run([sys.executable, str(ROOT / "rlmed" / "run.py"), str(recipe)], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("kind", sorted(KILLED_STAGES))
def test_stage_killed_mid_training_resumes_from_its_checkpoint(tmp_path, tiny_model, kind):
    """Killed after checkpoint-4 and run again, the stage ends where an uninterrupted run ends: the same loss at
    every step after the resume and the same final weights, so the weights, optimizer and scheduler state and
    the data order all came back from the checkpoint (losing any of them changes steps 5-8)."""
    recipe = write_recipe(tmp_path / "recipe.yaml", {"name": "kill", "run_dir": str(tmp_path / "run"),
                                                     "defaults": {"seed": 1},  # run_recipe's seed, as below
                                                     "stages": [killable_stage(tiny_model, kind, kill=True)]})
    killed = run_in_subprocess(recipe, armed=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    stage_dir = tmp_path / "run" / "cpt"
    assert not (stage_dir / "manifest.json").exists()
    assert (stage_dir / "checkpoints" / "checkpoint-4" / "trainer_state.json").exists()

    resumed = run_in_subprocess(recipe, armed=False)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "checkpoint-4 (step 4)" in resumed.stderr
    manifest = json.loads((stage_dir / "manifest.json").read_text())
    assert manifest["resumed"] is True and manifest["metrics"]["resumed_from_step"] == 4
    # The resumed run took its data from the cache the killed one prepared (its records, not timing).
    events = DataCache(tmp_path / "run" / ".rlmed" / "data").events()
    first_pid = events[0]["pid"]
    assert {e["action"] for e in events if e["pid"] == first_pid} == {"prepared"}
    assert {e["action"] for e in events if e["pid"] != first_pid} == {"reused"}
    tokens = [e["entry"] for e in events if e["entry"].startswith("tokens-")][0]
    assert len(json.loads((tmp_path / "run" / ".rlmed" / "data" / tokens / "record.json").read_text())["files"]) == 2

    # The uninterrupted run, in this process (no kill callback: same seed, data and settings otherwise).
    straight = tmp_path / "straight"
    straight.mkdir()
    assert run_recipe(straight, [killable_stage(tiny_model, kind, kill=False)], name="kill") == 0
    a, b = read_metrics(stage_dir), read_metrics(straight / "run" / "cpt")
    assert [r["step"] for r in a if "loss" in r] == list(range(1, 9))  # 5-8 once, from the resumed run
    assert [r["loss"] for r in a if "loss" in r] == pytest.approx([r["loss"] for r in b if "loss" in r], rel=1e-5)
    wa = load_file(str(stage_dir / "model" / "model.safetensors"))
    wb = load_file(str(straight / "run" / "cpt" / "model" / "model.safetensors"))
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-5


def test_changed_config_after_a_crash_starts_over(tmp_path, tiny_model):
    stages = two_stages(tiny_model)[:1]
    stages[0]["trainer"].update({"max_steps": 6, "save_steps": 3})
    assert run_recipe(tmp_path, stages) == 0
    stage_dir = tmp_path / "run" / "cpt"
    (stage_dir / "manifest.json").unlink()  # as if it had crashed after its checkpoints
    stages[0]["trainer"]["learning_rate"] = 5e-4
    assert run_recipe(tmp_path, stages) == 0
    manifest = json.loads((stage_dir / "manifest.json").read_text())
    assert manifest["resumed"] is False and "resumed_from_step" not in manifest["metrics"]
