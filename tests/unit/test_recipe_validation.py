"""Every bad-recipe case is reported, all at once, each line naming the recipe file, stage id and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlmed.recipe import RecipeError, load_recipe
from tests.conftest import write_jsonl, write_recipe


@pytest.fixture
def files(tmp_path: Path) -> Path:
    write_jsonl(tmp_path / "corpus.jsonl", [{"text": "小儿发热的护理要点。"}])
    write_jsonl(tmp_path / "sft.jsonl", [{"instruction": "孩子发烧怎么办？", "output": "多喝水，观察精神。"}])
    return tmp_path


def base_stages() -> list[dict]:
    return [
        {"id": "base", "kind": "tiny_model", "inputs": {"texts": "corpus.jsonl"}},
        {"id": "sft", "kind": "sft", "inputs": {"model": "$base.model", "data": "sft.jsonl"}},
    ]


def problems_of(files: Path, recipe: dict) -> list[str]:
    path = write_recipe(files / "recipe.yaml", recipe)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    for line in info.value.problems:
        assert line.startswith(f"{path}"), line  # every problem names the recipe file
    return info.value.problems


def one_problem(files: Path, recipe: dict) -> str:
    problems = problems_of(files, recipe)
    assert len(problems) == 1, problems
    return problems[0]


def test_valid_recipe_loads_with_typed_args_and_resolved_paths(files, monkeypatch):
    monkeypatch.chdir(files)
    stages = base_stages()
    stages[1]["trainer"] = {"learning_rate": "1e-5", "max_steps": "1e3"}  # strings YAML leaves unconverted
    recipe = load_recipe(write_recipe(files / "recipe.yaml", {"name": "ok", "stages": stages}))
    sft = recipe.stage("sft")
    assert sft.trainer == {"learning_rate": 1e-5, "max_steps": 1000}
    assert isinstance(sft.trainer["learning_rate"], float)
    assert recipe.stage("base").inputs["texts"][0].path == str((files / "corpus.jsonl").resolve())
    assert recipe.run_dir == Path("runs/ok")


def test_yaml_reads_1e_minus_5_as_a_string_and_it_still_becomes_a_float(files):
    (files / "recipe.yaml").write_text(
        "name: x\nstages:\n  - id: base\n    kind: tiny_model\n    inputs: {texts: corpus.jsonl}\n"
        "  - id: sft\n    kind: sft\n    inputs: {model: $base.model, data: sft.jsonl}\n"
        "    trainer: {learning_rate: 1e-5}\n", encoding="utf-8")
    recipe = load_recipe(files / "recipe.yaml")
    assert recipe.stage("sft").trainer["learning_rate"] == pytest.approx(1e-5)


def test_unknown_top_level_key(files):
    line = one_problem(files, {"name": "x", "stags": [], "stages": base_stages()})
    assert "stags: unknown top-level key" in line and "did you mean 'stages'" in line


def test_unknown_stage_key(files):
    stages = base_stages()
    stages[1]["trainr"] = {}
    line = one_problem(files, {"name": "x", "stages": stages})
    assert "stage 'sft'" in line and "trainr: unknown stage key" in line and "'trainer'" in line


def test_wrong_type_in_args(files):
    stages = base_stages()
    stages[0]["args"] = {"hidden_size": "big"}
    line = one_problem(files, {"name": "x", "stages": stages})
    assert "stage 'base'" in line and "args.hidden_size: expected int, got str 'big'" in line


def test_unknown_argument_suggests_the_right_one(files):
    stages = base_stages()
    stages[0]["args"] = {"hiden_size": 64}
    line = one_problem(files, {"name": "x", "stages": stages})
    assert "args.hiden_size: unknown argument of stage kind 'tiny_model'" in line and "hidden_size" in line


def test_unknown_stage_kind(files):
    stages = base_stages()
    stages[1]["kind"] = "sfft"
    line = one_problem(files, {"name": "x", "stages": stages})
    assert "stage 'sft'" in line and "kind: unknown stage kind 'sfft'" in line


def test_duplicate_stage_ids(files):
    stages = base_stages()
    stages[1]["id"] = "base"
    line = one_problem(files, {"name": "x", "stages": stages})
    assert "stages[1]" in line and "duplicate stage id 'base'" in line


def test_reference_to_a_later_stage(files):
    stages = base_stages()
    stages.append({"id": "sft2", "kind": "sft", "inputs": {"model": "$sft.model", "data": "sft.jsonl"}})
    stages[1]["inputs"]["model"] = "$sft2.model"
    line = one_problem(files, {"name": "x", "stages": stages})
    assert "stage 'sft': inputs.model: $sft2.model refers to stage 'sft2'" in line and "not an earlier" in line


def test_reference_to_an_unknown_stage(files):
    stages = base_stages()
    stages[1]["inputs"]["model"] = "$nosuch.model"
    line = one_problem(files, {"name": "x", "stages": stages})
    assert "inputs.model: $nosuch.model refers to stage 'nosuch'" in line


def test_reference_to_an_undeclared_output(files):
    stages = base_stages()
    stages[1]["inputs"]["model"] = "$base.weights"
    line = one_problem(files, {"name": "x", "stages": stages})
    assert "stage 'base' has no output 'weights' (it writes: model)" in line


def test_missing_input_file(files):
    stages = base_stages()
    stages[1]["inputs"]["data"] = ["sft.jsonl", "data/missing.jsonl"]
    line = one_problem(files, {"name": "x", "stages": stages})
    assert "stage 'sft': inputs.data[1]: data file not found: 'data/missing.jsonl'" in line


def test_missing_required_input(files):
    stages = base_stages()
    del stages[1]["inputs"]["data"]
    line = one_problem(files, {"name": "x", "stages": stages})
    assert "stage 'sft': inputs.data: missing required data input" in line


def test_hub_style_model_id_is_accepted_at_load(files):
    stages = base_stages()[1:]
    stages[0]["inputs"]["model"] = "Qwen/Qwen2.5-7B"
    recipe = load_recipe(write_recipe(files / "recipe.yaml", {"name": "x", "stages": stages}))
    assert recipe.stage("sft").inputs["model"] == "Qwen/Qwen2.5-7B"


def test_unknown_trainer_field(files):
    stages = base_stages()
    stages[1]["trainer"] = {"learning_rat": 1e-5}
    line = one_problem(files, {"name": "x", "stages": stages})
    assert "stage 'sft': trainer.learning_rat: not a field of trl.SFTConfig" in line and "learning_rate" in line


def test_trainer_field_of_wrong_type(files):
    stages = base_stages()
    stages[1]["trainer"] = {"num_train_epochs": "three"}
    line = one_problem(files, {"name": "x", "stages": stages})
    assert "trainer.num_train_epochs: expected float" in line


def test_trainer_block_on_a_stage_that_does_not_train(files):
    stages = base_stages()
    stages[0]["trainer"] = {"learning_rate": 1e-5}
    line = one_problem(files, {"name": "x", "stages": stages})
    assert "stage 'base': trainer: stage kind 'tiny_model' does not train" in line


def test_bad_component_path(files):
    stages = base_stages()
    stages[1]["callbacks"] = [{"_component_": "transformers.NoSuchCallback"}]
    line = one_problem(files, {"name": "x", "stages": stages})
    assert "stage 'sft': callbacks[0]._component_:" in line and "no attribute 'NoSuchCallback'" in line


def test_bad_component_module(files):
    stages = base_stages()
    stages[1]["callbacks"] = [{"_component_": "nosuchpackage.callbacks.Mine"}]
    line = one_problem(files, {"name": "x", "stages": stages})
    assert "callbacks[0]._component_: no module found for 'nosuchpackage.callbacks.Mine'" in line


def test_bad_component_arguments(files):
    stages = base_stages()
    stages[1]["callbacks"] = [{"_component_": "transformers.EarlyStoppingCallback",
                               "early_stopping_patience": "soon", "patience_typo": 3}]
    problems = problems_of(files, {"name": "x", "stages": stages})
    assert any("callbacks[0].patience_typo: unknown argument" in p for p in problems), problems
    assert any("callbacks[0].early_stopping_patience: expected int" in p for p in problems), problems


def test_defaults_key_no_stage_uses(files):
    line = one_problem(files, {"name": "x", "defaults": {"sed": 1}, "stages": base_stages()})
    assert "defaults.sed: no stage in this recipe has a field named 'sed'" in line


def test_rlmed_managed_trainer_field(files):
    stages = base_stages()
    stages[1]["trainer"] = {"output_dir": "/tmp/x"}
    line = one_problem(files, {"name": "x", "stages": stages})
    assert "trainer.output_dir: set by rlmed" in line


def test_every_problem_is_reported_at_once(files):
    stages = base_stages()
    stages[0]["args"] = {"hidden_size": "big"}
    stages[1]["trainer"] = {"learning_rat": 1}
    stages[1]["inputs"]["data"] = "nope.jsonl"
    stages.append({"id": "sft", "kind": "distill"})
    problems = problems_of(files, {"name": "x", "extra": 1, "stages": stages})
    assert len(problems) == 6, problems
    joined = "\n".join(problems)
    for expected in ("extra: unknown top-level key", "args.hidden_size", "trainer.learning_rat",
                     "nope.jsonl", "duplicate stage id 'sft'", "unknown stage kind 'distill'"):
        assert expected in joined


def test_invalid_yaml_names_the_line(files):
    (files / "recipe.yaml").write_text("name: x\nstages:\n  - id: a\n   kind: b\n", encoding="utf-8")
    with pytest.raises(RecipeError) as info:
        load_recipe(files / "recipe.yaml")
    assert str(info.value).startswith(f"{files / 'recipe.yaml'}:4: invalid YAML")


def test_weights_on_some_sources_only(files):
    stages = base_stages()
    stages[1]["inputs"]["data"] = [{"path": "sft.jsonl", "weight": 2}, "sft.jsonl"]
    line = one_problem(files, {"name": "x", "stages": stages})
    assert "inputs.data: give a weight to every data source or to none" in line


def test_missing_deepspeed_config(files):
    line = one_problem(files, {"name": "x", "defaults": {"deepspeed": "ds_configs/zero9.json"}, "stages": base_stages()})
    assert "stage 'sft': defaults.deepspeed: DeepSpeed config 'ds_configs/zero9.json' not found" in line


def test_shipped_deepspeed_config_resolves_from_anywhere(files, monkeypatch):
    monkeypatch.chdir(files)  # not the project root
    stages = base_stages()
    stages[1]["trainer"] = {"deepspeed": "ds_configs/zero3.json"}
    recipe = load_recipe(write_recipe(files / "recipe.yaml", {"name": "x", "stages": stages}))
    deepspeed = Path(recipe.stage("sft").trainer["deepspeed"])
    assert deepspeed.is_absolute() and deepspeed.parent.name == "ds_configs" and deepspeed.is_file()


def test_wandb_block_with_unknown_field(files):
    line = one_problem(files, {"name": "x", "wandb": {"projct": "rlmed"}, "stages": base_stages()})
    assert "wandb: expected fields of WandbSettings" in line and "unknown: projct" in line


def test_lora_block_checked_field_by_field(files):
    stages = base_stages()
    stages[1]["args"] = {"lora": {"r": "eight"}}
    line = one_problem(files, {"name": "x", "stages": stages})
    assert "stage 'sft': args.lora: expected r: int, got str 'eight'" in line


def test_merge_without_lora(files):
    stages = base_stages()
    stages[1]["args"] = {"merge": True}
    line = one_problem(files, {"name": "x", "stages": stages})
    assert "stage 'sft': args: merge: true needs a lora block" in line
    assert line.endswith("got merge=True, lora=None")  # the values rlmed read, not only the rule


def feedback_stage(**extra) -> dict:
    return {"id": "fb", "kind": "ai_feedback", "inputs": {"model": "$base.model", "prompts": "sft.jsonl"}, **extra}


def test_reward_block_required_by_ai_feedback(files):
    line = one_problem(files, {"name": "x", "stages": base_stages() + [feedback_stage()]})
    assert "stage 'fb': reward: stage kind 'ai_feedback' needs a reward source" in line


def test_reward_block_on_a_stage_that_takes_none(files):
    stages = base_stages()
    stages[1]["reward"] = {"_component_": "tests.helpers.rewards.CharOverlap"}
    line = one_problem(files, {"name": "x", "stages": stages})
    assert "stage 'sft': reward: stage kind 'sft' takes no reward source" in line


def test_reward_component_arguments_and_references_are_checked(files):
    reward = {"_component_": "tests.helpers.rewards.CharOverlap", "fail_evry": 2, "scale": "$nosuch.model"}
    problems = problems_of(files, {"name": "x", "stages": base_stages() + [feedback_stage(reward=reward)]})
    assert any("stage 'fb': reward.fail_evry: unknown argument" in p for p in problems), problems
    assert any("stage 'fb': reward: $nosuch.model refers to stage 'nosuch'" in p for p in problems), problems


def test_reward_reference_makes_the_graph(files):
    reward = {"_component_": "tests.helpers.rewards.CharOverlap", "scale": 1.0}
    stages = base_stages() + [feedback_stage(reward=reward)]
    recipe = load_recipe(write_recipe(files / "recipe.yaml", {"name": "x", "stages": stages}))
    assert recipe.stage("fb").reward == reward
    assert [str(r) for r in recipe.stage("fb").refs()] == ["$base.model"]


def test_use_liger_kernel_takes_auto_and_stays_unresolved_until_the_stage_runs(files, monkeypatch):
    monkeypatch.chdir(files)
    stages = base_stages()
    stages[1]["trainer"] = {"use_liger_kernel": "auto"}
    recipe = load_recipe(write_recipe(files / "recipe.yaml", {"name": "ok", "stages": stages}))
    assert recipe.stage("sft").trainer["use_liger_kernel"] == "auto"  # the running machine decides


def test_use_liger_kernel_rejects_other_words(files):
    stages = base_stages()
    stages[1]["trainer"] = {"use_liger_kernel": "sometimes"}
    problem = one_problem(files, {"name": "bad", "stages": stages})
    assert "stage 'sft'" in problem and "trainer.use_liger_kernel" in problem
