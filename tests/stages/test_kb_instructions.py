"""Stage kb_instructions: knowledge-base rows filled into question/answer templates, written as alpaca rows."""

from __future__ import annotations

import json
from pathlib import Path

from rlmed.cli import main
from rlmed.data.formats import as_messages
from rlmed.data.records import read_records
from rlmed.data.sources import dialogue, load_sources
from rlmed.recipe import load_recipe
from rlmed.stages.base import DataSource, StageContext
from rlmed.stages.kb_instructions import Args, run
from rlmed.stages.sft import tokenize_all
from tests.conftest import SAMPLE, write_jsonl, write_recipe
from tests.stages.conftest import manifest

DRUGS = [
    {"drug": "对乙酰氨基酚", "indications": ["儿童发热", "轻中度疼痛"]},
    {"drug": "布洛芬", "indications": ["儿童发热"]},
    {"drug": "阿司匹林", "indications": []},  # nothing to say: skipped for the drug template
]
DISEASES = [
    {"disease": "发热", "symptoms": ["体温升高", "精神差"]},
    {"disease": "手足口病", "symptoms": ["发热", "口腔疱疹"], "tests": ["血常规"]},
]
TEMPLATES = [
    {"question": "{drug}的适应病症是什么？", "answer": "{drug}的适应病症包括：{indications}。"},
    {"question": "{disease}有哪些常见症状？", "answer": "{disease}的常见症状有：{symptoms}。"},
]
SYSTEM = "你是儿科医生。"
EXPECTED = [
    {"instruction": "对乙酰氨基酚的适应病症是什么？", "input": "", "output": "对乙酰氨基酚的适应病症包括：儿童发热、轻中度疼痛。",
     "system": SYSTEM},
    {"instruction": "布洛芬的适应病症是什么？", "input": "", "output": "布洛芬的适应病症包括：儿童发热。", "system": SYSTEM},
    {"instruction": "发热有哪些常见症状？", "input": "", "output": "发热的常见症状有：体温升高、精神差。", "system": SYSTEM},
    {"instruction": "手足口病有哪些常见症状？", "input": "", "output": "手足口病的常见症状有：发热、口腔疱疹。", "system": SYSTEM},
]


def kb_stage(tmp_path: Path, templates: list[dict], **args) -> dict:
    write_jsonl(tmp_path / "drugs.jsonl", DRUGS)
    write_jsonl(tmp_path / "diseases.jsonl", DISEASES)
    table = [str(tmp_path / "drugs.jsonl"), str(tmp_path / "diseases.jsonl")]
    return {"id": "kb", "kind": "kb_instructions", "inputs": {"table": table},
            "args": {"templates": templates, **args}}


def run_recipe(tmp_path: Path, stages: list[dict]) -> int:
    """The real CLI on a recipe of these stages (no `defaults:`: this stage has no seed to take)."""
    recipe = write_recipe(tmp_path / "recipe.yaml", {"name": "kb", "run_dir": str(tmp_path / "run"), "stages": stages})
    return main(["run", str(recipe)])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_three_drugs_and_two_diseases_give_exactly_the_expected_pairs_through_the_runner(tmp_path):
    assert run_recipe(tmp_path, [kb_stage(tmp_path, TEMPLATES, system=SYSTEM)]) == 0
    out = tmp_path / "run" / "kb" / "instructions.jsonl"
    assert read_jsonl(out) == EXPECTED
    metrics = manifest(tmp_path, "kb")["metrics"]
    assert metrics == {"rows_read": 5, "pairs_written": 4, "pairs_per_template": [2, 2],
                       "skipped_per_template": [3, 3], "bad_rows": 0}
    assert [as_messages(r)[-1]["content"] for r in read_records(out)] == [e["output"] for e in EXPECTED]


def test_a_placeholder_no_row_has_fails_naming_the_template_index(tmp_path, capsys):
    templates = TEMPLATES + [{"question": "{drug}的剂量是多少？", "answer": "{dose}"}]
    assert run_recipe(tmp_path, [kb_stage(tmp_path, templates)]) == 1
    err = capsys.readouterr().err
    assert "stage 'kb' (kb_instructions) failed" in err
    assert "args.templates[2]: placeholder(s) {dose} name no field of any row" in err
    assert not (tmp_path / "run" / "kb" / "instructions.jsonl").exists()


def test_a_malformed_template_is_a_recipe_problem_naming_its_index(tmp_path, capsys):
    templates = [TEMPLATES[0], {"question": "{}是什么？", "answer": "x"}]
    assert run_recipe(tmp_path, [kb_stage(tmp_path, templates)]) == 2
    assert "args: templates[1].question: placeholder {} must name a row field" in capsys.readouterr().err


def test_bad_rows_are_skipped_and_counted_with_on_bad_rows_skip(tmp_path):
    write_jsonl(tmp_path / "drugs.jsonl", DRUGS + [{"drug": {"name": "布洛芬"}, "indications": ["发热"]}])
    stage = {"id": "kb", "kind": "kb_instructions", "args": {"templates": TEMPLATES[:1]},
             "inputs": {"table": [{"path": str(tmp_path / "drugs.jsonl"), "on_bad_rows": "skip"}]}}
    assert run_recipe(tmp_path, [stage]) == 0
    metrics = manifest(tmp_path, "kb")["metrics"]
    assert metrics["pairs_written"] == 2 and metrics["bad_rows"] == 1
    assert metrics["bad_row_reasons"] == [f"{tmp_path / 'drugs.jsonl'}:4: field 'drug' is an object; templates[0] "
                                          "needs text, a number or a list"]


def test_its_output_is_a_valid_instructions_input_for_sft(tmp_path, monkeypatch, tiny_tokenizer):
    """A recipe may hand `$kb.instructions` to sft, and sft's own loading and tokenising turn the written file into
    one training row per pair whose loss falls on the answer (and its end of turn) and nowhere else."""
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "corpus.jsonl", [{"text": "小儿发热的护理要点。"}])
    stages = [kb_stage(tmp_path, TEMPLATES), {"id": "base", "kind": "tiny_model", "inputs": {"texts": "corpus.jsonl"}},
              {"id": "sft", "kind": "sft", "inputs": {"model": "$base.model", "data": "$kb.instructions"}}]
    recipe = load_recipe(write_recipe(tmp_path / "recipe.yaml", {"name": "x", "stages": stages}))
    assert str(recipe.stage("sft").inputs["data"][0].path) == "$kb.instructions"

    assert run_recipe(tmp_path, [kb_stage(tmp_path, TEMPLATES, system=SYSTEM)]) == 0
    out = DataSource(str(tmp_path / "run" / "kb" / "instructions.jsonl"))
    dialogues = load_sources([out], dialogue, seed=0, keep_order=True).items
    rows = tokenize_all(tiny_tokenizer, dialogues, "kb")
    assert len(rows) == len(EXPECTED)
    for row, expected in zip(rows, EXPECTED):
        trained = [t for t in row["labels"] if t != -100]
        assert [t if m else -100 for t, m in zip(row["input_ids"], row["assistant_masks"])] == row["labels"]
        assert tiny_tokenizer.decode(trained) == expected["output"] + "<|im_end|>"
        text = tiny_tokenizer.decode(row["input_ids"])
        assert SYSTEM in text and expected["instruction"] in text


def test_sample_knowledge_base_smoke(tmp_path):
    ctx = StageContext(stage_id="kb", kind="kb_instructions", stage_dir=tmp_path, run_dir=tmp_path,
                       recipe_name="t", seed=0, outputs={"instructions": tmp_path / "instructions.jsonl"})
    args = Args(templates=TEMPLATES + [{"question": "{disease}要做哪些检查？", "answer": "{tests}"}])
    sources = [DataSource(str(SAMPLE / "kb_drugs.jsonl")), DataSource(str(SAMPLE / "kb_diseases.jsonl"))]
    metrics = run(ctx, {"table": sources}, args)
    rows = read_jsonl(tmp_path / "instructions.jsonl")
    assert metrics["pairs_written"] == len(rows) > 0 and metrics["rows_read"] == 36
    assert all(r["instruction"] and r["output"] and "{" not in r["instruction"] + r["output"] for r in rows)
