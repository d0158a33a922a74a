"""`rlmed run RECIPE --control shuffled-rewards`: the same recipe with every training reward shuffled."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlmed.cli import main
from rlmed.recipe import RecipeError, load_recipe
from tests.conftest import ROOT

RULES = {"_component_": "reward.rules.Rules", "red_flag_terms": ["抽搐"], "referral_phrases": ["急诊"]}


def test_control_wraps_training_rewards_and_leaves_the_measure():
    plain = load_recipe(ROOT / "recipes" / "tiny.yaml")
    control = load_recipe(ROOT / "recipes" / "tiny.yaml", control="shuffled-rewards")
    assert control.name == "tiny-shuffled-rewards" and control.run_dir == Path("runs/tiny-shuffled-rewards")
    rewarded = {s.id: s for s in plain.stages if s.reward is not None}
    assert {"feedback", "ppo", "grpo", "eval"} <= set(rewarded)
    for stage in control.stages:
        original = rewarded.get(stage.id)
        if original is None:
            assert stage.reward is None
        elif stage.kind == "evaluate":
            assert stage.reward == original.reward  # the measure is never shuffled
        else:
            assert stage.reward["_component_"] == "reward.control.Shuffled"
            assert stage.reward["source"] == original.reward and isinstance(stage.reward["seed"], int)
    # Stages before the first reward are configured identically, so their folders can be reused.
    for mine, theirs in zip(plain.stages, control.stages):
        if mine.id in ("base", "kb", "cpt", "sft"):
            assert mine.config() == theirs.config()


def test_control_run_dir_follows_an_explicit_run_dir(tmp_path):
    control = load_recipe(ROOT / "recipes" / "tiny.yaml", run_dir=tmp_path / "c", control="shuffled-rewards")
    assert control.run_dir == tmp_path / "c"


def test_unknown_control_is_a_recipe_error():
    with pytest.raises(RecipeError, match="unknown control 'flip'"):
        load_recipe(ROOT / "recipes" / "tiny.yaml", control="flip")


def test_cli_dry_run_with_control_prints_the_control_plan(capsys):
    assert main(["run", str(ROOT / "recipes" / "tiny.yaml"), "--control", "shuffled-rewards", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "(tiny-shuffled-rewards)" in out and "runs/tiny-shuffled-rewards" in out


def test_control_lifts_learning_gates():
    plain = load_recipe(ROOT / "recipes" / "tiny.yaml")
    control = load_recipe(ROOT / "recipes" / "tiny.yaml", control="shuffled-rewards")
    rm, rm_control = (next(s for s in r.stages if s.kind == "reward_model") for r in (plain, control))
    assert rm.args.min_accuracy is not None and rm_control.args.min_accuracy is None
