"""A stage's trainer defaults are declared in its SPEC, shown by --dry-run, written to the manifest with the rest
of the trainer fields, and counted in the stage's fingerprint: a changed default re-runs the stage."""

from __future__ import annotations

import dataclasses
import importlib
import json

import pytest

from rlmed.cli import main
from rlmed.stages.base import TRAINER_DEFAULTS, StageSpec
from tests.conftest import write_recipe

PROBE = "tests.helpers.trainer_stage"
ECHO = "tests.helpers.echo_stage"


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text("a")
    return tmp_path


def recipe(trainer: dict | None = None) -> dict:
    probe = {"id": "probe", "kind": PROBE, "inputs": {"source": "a.txt"}}
    if trainer:
        probe["trainer"] = trainer
    return {"name": "defaults", "run_dir": "run", "stages": [
        {"id": "first", "kind": ECHO, "inputs": {"source": "a.txt"}},
        probe,
        {"id": "after", "kind": ECHO, "inputs": {"source": "$probe.text"}},
    ]}


def run(project, rec, *flags) -> tuple[int, list[str]]:
    log = project / "run" / "executions.log"
    log.unlink(missing_ok=True)
    code = main(["run", str(write_recipe(project / "r.yaml", rec)), *flags])
    return code, log.read_text().split() if log.exists() else []


def manifest(project, stage: str) -> dict:
    return json.loads((project / "run" / stage / "manifest.json").read_text())


def test_manifest_records_the_merged_trainer_fields_rlmed_then_stage_then_recipe(project):
    assert run(project, recipe({"per_device_train_batch_size": 2, "save_total_limit": 5})) == \
        (0, ["first", "probe", "after"])
    fields = manifest(project, "probe")["trainer_fields"]
    assert fields["learning_rate"] == 3e-4  # the stage's default
    assert fields["per_device_train_batch_size"] == 2  # the recipe over the stage's default
    assert fields["save_total_limit"] == 5  # the recipe over rlmed's default
    assert fields["logging_steps"] == TRAINER_DEFAULTS["logging_steps"]  # rlmed's, untouched
    assert fields["max_steps"] == 3  # derived by the stage
    assert fields["output_dir"].endswith("probe/checkpoints") and fields["seed"] == 42
    assert (project / "run" / "probe" / "out.txt").read_text() == "0.0003 2\n"  # what the trainer really got
    # The manifest is enough to rebuild the same config.
    from transformers import TrainingArguments

    rebuilt = TrainingArguments(**fields)
    assert (rebuilt.learning_rate, rebuilt.per_device_train_batch_size, rebuilt.save_total_limit) == (3e-4, 2, 5)
    assert manifest(project, "probe")["config"]["trainer_defaults"]["learning_rate"] == 3e-4
    assert manifest(project, "first")["trainer_fields"] is None  # a stage that does not train


def test_a_changed_stage_default_reruns_that_stage_and_its_dependants(project, monkeypatch):
    assert run(project, recipe()) == (0, ["first", "probe", "after"])
    assert run(project, recipe()) == (0, [])
    module = importlib.import_module(PROBE)
    # What a new rlmed version changing the stage kind's default looks like to an existing run folder.
    changed = dataclasses.replace(module.SPEC,
                                  trainer_defaults={**module.SPEC.trainer_defaults, "learning_rate": 1e-4})
    monkeypatch.setattr(module, "SPEC", changed)
    assert run(project, recipe(), "--dry-run")[0] == 0
    assert run(project, recipe()) == (0, ["probe", "after"])
    assert manifest(project, "probe")["trainer_fields"]["learning_rate"] == 1e-4
    assert run(project, recipe()) == (0, [])  # and up to date again


def test_a_changed_rlmed_default_reruns_every_training_stage(project, monkeypatch):
    run(project, recipe())
    import rlmed.stages.base as base

    monkeypatch.setattr(base, "TRAINER_DEFAULTS", {**TRAINER_DEFAULTS, "save_total_limit": 3})
    assert run(project, recipe()) == (0, ["probe", "after"])
    assert manifest(project, "probe")["trainer_fields"]["save_total_limit"] == 3


def test_dry_run_shows_each_trainer_field_and_where_it_comes_from(project, capsys):
    assert run(project, recipe({"per_device_train_batch_size": 2}), "--dry-run") == (0, [])
    out = capsys.readouterr().out
    trainer = out[out.index("[run] probe"):out.index("[run] after")]
    shown = " ".join(trainer.split())
    assert "learning_rate=0.0003 (stage)" in shown
    assert "per_device_train_batch_size=2 (recipe)" in shown
    assert "logging_steps=1," in shown and "logging_steps=1 (" not in shown  # rlmed's own, unmarked
    assert "trainer:" not in out[out.index("[run] first"):out.index("[run] probe")]


def test_trainer_defaults_need_a_trainer_config():
    with pytest.raises(ValueError, match="trainer_defaults given, but the stage names no trainer_config"):
        StageSpec(kind="x", args=object, inputs={}, outputs={}, run=lambda *a: None, trainer_defaults={"a": 1})


def test_every_training_stage_declares_its_batch_size_learning_rate_and_length():
    """The defaults the built-in training stages set live in their SPECs, where the fingerprint sees them."""
    from rlmed.stages import get_spec

    for kind in ("pretrain", "sft", "dpo", "reward_model", "ppo", "grpo", "rloo", "mole"):
        spec = get_spec(kind)
        assert {"per_device_train_batch_size", "learning_rate"} <= set(spec.trainer_defaults), kind
        assert spec.default_trainer()["report_to"] == "none", kind


@pytest.mark.parametrize("recipe_fields, expected", [
    ({}, True),  # trl's SFTConfig default, under its current name
    ({"gradient_checkpointing": False}, False),  # the name users write, translated
    ({"activation_checkpointing": False}, False),
])
def test_renamed_trainer_fields_take_their_current_names_without_a_warning(tmp_path, recipe_fields, expected):
    import warnings

    from rlmed import training
    from rlmed.stages.base import StageContext

    ctx = StageContext(stage_id="sft", kind="sft", stage_dir=tmp_path, run_dir=tmp_path, recipe_name="t", seed=1,
                       trainer={**recipe_fields, "gradient_checkpointing_kwargs": {"use_reentrant": False}},
                       trainer_defaults=dict(TRAINER_DEFAULTS))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = training.trainer_config(ctx, "trl.SFTConfig", has_eval=False)
    assert not [w for w in caught if "checkpointing" in str(w.message)], [str(w.message) for w in caught]
    assert config.activation_checkpointing is expected and config.gradient_checkpointing is expected
    assert config.activation_checkpointing_kwargs == {"use_reentrant": False}
    assert "gradient_checkpointing" not in ctx.trainer_fields
    assert ctx.trainer_fields["activation_checkpointing"] is expected
