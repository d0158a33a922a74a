"""sft on the tiny model: falling loss on assistant tokens, chained stages, template override, bad data."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import write_jsonl
from tests.stages.conftest import FAST_STEPS, LOSS_FRACTION, losses, manifest, run_recipe, sample


class SamplerProbe:
    """A trainer callback (a recipe `callbacks:` component) that writes the names of the samplers the training
    dataloader draws its rows with, whatever wrappers accelerate put around them."""

    def __new__(cls, path: str):
        from transformers import TrainerCallback

        class Probe(TrainerCallback):
            def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
                found, seen = [], set()
                todo = [train_dataloader]
                while todo:
                    obj = todo.pop()
                    if obj is None or id(obj) in seen:
                        continue
                    seen.add(id(obj))
                    found.append(type(obj).__name__)
                    todo += [getattr(obj, name, None) for name in ("sampler", "batch_sampler", "base_dataloader")]
                with open(path, "w", encoding="utf-8") as handle:
                    json.dump({"strategy": str(args.train_sampling_strategy), "samplers": found}, handle)

        return Probe()


def test_sft_loss_falls_and_model_is_saved(tmp_path, tiny_model, fast_trainer):
    stages = [{
        "id": "sft", "kind": "sft",
        "inputs": {"model": str(tiny_model),
                   "data": [sample("dialogues.jsonl"), sample("sharegpt.jsonl"), sample("instructions.jsonl")]},
        "trainer": {**fast_trainer, "max_length": 384},
    }]
    assert run_recipe(tmp_path, stages) == 0
    m = manifest(tmp_path, "sft")
    assert m["metrics"]["global_step"] == FAST_STEPS and m["metrics"]["eval_loss"] > 0
    assert m["metrics"]["train_dialogues"] + m["metrics"]["eval_dialogues"] == 400 + 150 + 500
    curve = losses(tmp_path, "sft")
    assert sum(curve[-5:]) / 5 < LOSS_FRACTION * curve[0]
    AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "sft" / "model")
    # The cached tokenisation truncated to max_length, so SFTTrainer skipped its own pass and wrote no copy.
    assert m["metrics"]["train_rows_truncated_away"] == 0
    assert not list((tmp_path / "run" / ".rlmed" / "data").rglob("cache-*.arrow"))
    # The manifest holds the trainer config the run had, rebuildable: recipe fields over sft's declared defaults.
    from trl import SFTConfig

    from rlmed.stages.sft import SPEC

    rebuilt = SFTConfig(**m["trainer_fields"])
    assert (rebuilt.learning_rate, rebuilt.max_length, rebuilt.max_steps) == (5e-3, 384, FAST_STEPS)
    assert rebuilt.num_train_epochs == SPEC.trainer_defaults["num_train_epochs"] and not rebuilt.bf16


def test_two_chained_sft_stages_disc_medllm_style(tmp_path, tiny_model):
    """Stage 1 on broad data, stage 2 ('behaviour fine-tuning') on a small set with a lower lr, from stage 1.

    `sft2_still` is stage 2 at learning rate 0: it saves exactly the weights it started from, and those are
    stage 1's (from the base model they would be the base's), so a stage 2 that moved away from them trained on
    top of stage 1 rather than beside it."""
    stage2 = {"kind": "sft", "inputs": {"model": "$sft1.model", "data": sample("sharegpt.jsonl")},
              "args": {"num_samples": 40, "validation_fraction": 0},
              "trainer": {"max_steps": 4, "learning_rate": 5e-4, "per_device_train_batch_size": 4}}
    stages = [
        {"id": "sft1", "kind": "sft", "inputs": {"model": str(tiny_model), "data": sample("dialogues.jsonl")},
         "trainer": {"max_steps": 6, "learning_rate": 1e-3, "per_device_train_batch_size": 8,
                     "train_sampling_strategy": "group_by_length"},
         "callbacks": [{"_component_": "tests.stages.test_sft.SamplerProbe", "path": str(tmp_path / "probe.json")}]},
        {"id": "sft2", **stage2},
        {"id": "sft2_still", **stage2, "trainer": {**stage2["trainer"], "max_steps": 1, "learning_rate": 0.0}},
    ]
    assert run_recipe(tmp_path, stages) == 0
    first, second = manifest(tmp_path, "sft1"), manifest(tmp_path, "sft2")
    assert second["inputs"]["model"] == first["outputs"]["model"]
    assert second["metrics"]["train_dialogues"] == 40 and second["metrics"]["eval_dialogues"] == 0
    weights = {stage: AutoModelForCausalLM.from_pretrained(tmp_path / "run" / stage / "model").state_dict()
               for stage in ("sft1", "sft2", "sft2_still")}
    base = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    a, b, still = weights["sft1"], weights["sft2"], weights["sft2_still"]
    assert any(not torch.equal(a[k], base[k]) for k in a)  # stage 1 trained
    assert all(torch.equal(a[k], still[k]) for k in a)  # stage 2 starts from stage 1's weights...
    assert any(not torch.equal(a[k], b[k]) for k in a)  # ...and trains on from there
    # The length-grouping switch (2% padding instead of 43%: bench.data) reaches the sampler trl's trainer uses.
    probe = json.loads((tmp_path / "probe.json").read_text(encoding="utf-8"))
    assert probe["strategy"] == "group_by_length" and "LengthGroupedSampler" in probe["samplers"], probe


def test_chat_template_from_recipe_is_used_and_saved(tmp_path, tiny_model):
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    (tmp_path / "template.jinja").write_text(template, encoding="utf-8")
    stages = [{"id": "sft", "kind": "sft", "inputs": {"model": str(tiny_model), "data": sample("dialogues.jsonl")},
               "args": {"chat_template": str(tmp_path / "template.jinja"), "validation_fraction": 0},
               "trainer": {"max_steps": 1}}]
    assert run_recipe(tmp_path, stages) == 0
    assert AutoTokenizer.from_pretrained(tmp_path / "run" / "sft" / "model").chat_template == template


def test_malformed_row_fails_the_stage_naming_file_and_line(tmp_path, tiny_model, capsys):
    bad = write_jsonl(tmp_path / "bad.jsonl", [
        {"messages": [{"role": "user", "content": "孩子咳嗽"}, {"role": "assistant", "content": "多喝水"}]},
        {"messages": [{"role": "user", "content": "孩子发烧"}, {"role": "user", "content": "还在吗"}]},
    ])
    stages = [{"id": "sft", "kind": "sft", "inputs": {"model": str(tiny_model), "data": str(bad)},
               "trainer": {"max_steps": 1}}]
    assert run_recipe(tmp_path, stages) == 1
    err = capsys.readouterr().err
    assert "stage 'sft' (sft) failed" in err
    assert f"{bad}:2: messages[1]: expected role 'assistant' after 'user', got 'user'" in err
    assert not (tmp_path / "run" / "sft" / "manifest.json").exists()


def test_hub_id_model_fails_clearly_at_load_time(tmp_path, capsys):
    stages = [{"id": "sft", "kind": "sft", "inputs": {"model": "Qwen/Qwen2.5-0.5B-Instruct",
                                                      "data": sample("dialogues.jsonl")}}]
    assert run_recipe(tmp_path, stages) == 1
    err = capsys.readouterr().err
    assert "'Qwen/Qwen2.5-0.5B-Instruct' is not a local folder" in err and "point the recipe at DIR" in err


def test_hub_dataset_id_fails_clearly_at_load_time(tmp_path, tiny_model, capsys):
    stages = [{"id": "sft", "kind": "sft", "inputs": {"model": str(tiny_model), "data": "someorg/peds-dialogues"}}]
    assert run_recipe(tmp_path, stages) == 1
    err = capsys.readouterr().err
    assert "someorg/peds-dialogues: not a local file, and the Hub dataset could not be loaded" in err
