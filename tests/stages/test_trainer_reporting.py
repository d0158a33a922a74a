"""A trainer's own reporting integrations would upload past rlmed's de-identification (issue 15, item 4): trl's
log_completions sends prompts and completions to W&B as they are. A stage that asks for one fails, named."""

from __future__ import annotations

import pytest

from tests.stages.conftest import run_recipe, sample


@pytest.mark.parametrize("report_to", ["wandb", ["tensorboard", "wandb"]])
def test_trainer_report_to_is_refused_with_the_stage_and_the_key(tmp_path, tiny_model, capsys, report_to):
    stage = {"id": "sft", "kind": "sft",
             "inputs": {"model": str(tiny_model), "data": [sample("dialogues.jsonl")]},
             "trainer": {"max_steps": 1, "report_to": report_to, "per_device_train_batch_size": 2}}
    assert run_recipe(tmp_path, [stage]) == 1
    err = capsys.readouterr().err
    assert "stage sft: trainer.report_to=" in err and "recipe's `wandb` block" in err
    assert not (tmp_path / "run" / "sft" / "manifest.json").exists()


def test_report_to_none_still_trains(tmp_path, tiny_model):
    stage = {"id": "sft", "kind": "sft",
             "inputs": {"model": str(tiny_model), "data": [sample("dialogues.jsonl")]},
             "trainer": {"max_steps": 1, "report_to": "none", "per_device_train_batch_size": 2}}
    assert run_recipe(tmp_path, [stage]) == 0
