"""A data source's `columns:` renames user columns to rlmed's fields; `on_bad_rows:` and the new formats
are validated when the recipe loads, one problem line each naming the recipe file, stage and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlmed.data.columns import rename_columns
from rlmed.data.formats import as_messages, as_text
from rlmed.data.records import DataError, Record
from rlmed.data.sources import load_sources, source_records
from rlmed.recipe import RecipeError, load_recipe
from rlmed.stages.base import DataSource
from tests.conftest import write_jsonl, write_recipe


def qa_file(tmp_path: Path, rows: list[dict] | None = None) -> Path:
    rows = rows or [{"question": "孩子发烧怎么办？", "answer": "多喝水，观察精神。", "id": 7}]
    return write_jsonl(tmp_path / "qa.jsonl", rows)


def test_columns_rename_user_fields_so_converters_see_rlmed_names(tmp_path):
    source = DataSource(str(qa_file(tmp_path)), columns={"instruction": "question", "output": "answer"})
    assert [r.row for r in source_records(source)] == [
        {"id": 7, "instruction": "孩子发烧怎么办？", "output": "多喝水，观察精神。"}]
    result = load_sources([source], lambda r, f: as_messages(r, f), seed=0)
    assert result.items == [[{"role": "user", "content": "孩子发烧怎么办？"},
                             {"role": "assistant", "content": "多喝水，观察精神。"}]]


def test_a_missing_mapped_column_is_reported_under_the_users_column_name(tmp_path):
    path = qa_file(tmp_path, [{"question": "问", "answer": "答"}, {"question": "只有问题"}])
    source = DataSource(str(path), columns={"instruction": "question", "output": "answer"})
    with pytest.raises(DataError) as info:
        load_sources([source], lambda r, f: as_messages(r, f), seed=0)
    assert str(info.value).startswith(f"{path}:2: cannot detect the data format")
    assert str(info.value).endswith("mapped column(s) missing in this row: 'answer' (for 'output')")
    fixed = DataSource(str(path), format="alpaca", columns={"instruction": "question", "output": "answer"})
    with pytest.raises(DataError) as info:
        load_sources([fixed], lambda r, f: as_messages(r, f), seed=0)
    assert str(info.value) == f"{path}:2: missing field 'answer' (mapped to 'output' by columns; alpaca format)"


def test_a_mapped_field_is_taken_only_from_its_column(tmp_path):
    record = Record("f.jsonl", 1, {"text": "旧的", "body": "正文"})
    assert rename_columns(record, {"text": "body"}).row == {"text": "正文"}
    without = rename_columns(Record("f.jsonl", 1, {"text": "旧的"}), {"text": "body"})
    with pytest.raises(DataError, match="missing field 'body' \\(mapped to 'text' by columns; text format\\)"):
        as_text(without, "text")


def test_columns_can_swap_two_fields():
    record = Record("f.jsonl", 1, {"instruction": "答", "output": "问"})
    assert rename_columns(record, {"instruction": "output", "output": "instruction"}).row == {
        "instruction": "问", "output": "答"}


def test_an_optional_mapped_column_may_be_absent(tmp_path):
    path = qa_file(tmp_path, [{"question": "问", "answer": "答"}])
    source = DataSource(str(path), columns={"instruction": "question", "output": "answer", "input": "context"})
    assert load_sources([source], lambda r, f: as_messages(r, f), seed=0).items[0][0]["content"] == "问"


# --- recipe validation ----------------------------------------------------------------------------------------

def recipe_with_source(tmp_path: Path, source: dict) -> Path:
    write_jsonl(tmp_path / "corpus.jsonl", [{"text": "小儿发热的护理要点。"}])
    qa_file(tmp_path)
    stages = [{"id": "base", "kind": "tiny_model", "inputs": {"texts": "corpus.jsonl"}},
              {"id": "sft", "kind": "sft", "inputs": {"model": "$base.model", "data": [source]}}]
    return write_recipe(tmp_path / "recipe.yaml", {"name": "x", "stages": stages})


def one_problem(tmp_path: Path, source: dict) -> str:
    path = recipe_with_source(tmp_path, source)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert len(info.value.problems) == 1, info.value.problems
    line = info.value.problems[0]
    assert line.startswith(f"{path}: stage 'sft': inputs.data[0]"), line
    return line


def test_recipe_data_source_accepts_columns_on_bad_rows_and_new_formats(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = recipe_with_source(tmp_path, {"path": "qa.jsonl", "columns": {"instruction": "question"},
                                         "on_bad_rows": "skip", "format": "alpaca"})
    source = load_recipe(path).stage("sft").inputs["data"][0]
    assert source.columns == {"instruction": "question"} and source.on_bad_rows == "skip"
    for fmt in ("pairwise", "doctor"):
        recipe_with_source(tmp_path, {"path": "qa.jsonl", "format": fmt})
        assert load_recipe(path).stage("sft").inputs["data"][0].format == fmt
    recipe_with_source(tmp_path, {"path": "qa.jsonl"})
    assert load_recipe(path).stage("sft").inputs["data"][0].on_bad_rows == "fail"


def test_columns_that_are_not_a_mapping_is_one_problem(tmp_path):
    line = one_problem(tmp_path, {"path": "qa.jsonl", "columns": ["question", "answer"]})
    assert ".columns: expected a mapping of rlmed field name to your column name" in line and "got list" in line


def test_a_column_name_that_is_not_a_string_is_one_problem(tmp_path):
    line = one_problem(tmp_path, {"path": "qa.jsonl", "columns": {"instruction": 3}})
    assert "inputs.data[0].columns.instruction: expected your column's name (a non-empty string), got int 3" in line


def test_a_bad_on_bad_rows_value_is_one_problem(tmp_path):
    line = one_problem(tmp_path, {"path": "qa.jsonl", "on_bad_rows": "ignore"})
    assert "inputs.data[0].on_bad_rows: expected one of fail, skip, got 'ignore'" in line


def test_text_unit_is_checked_and_reaches_the_source(tmp_path):
    line = one_problem(tmp_path, {"path": "qa.jsonl", "text_unit": "sentence"})
    assert "inputs.data[0].text_unit: expected line (one document per line of a .txt file) or paragraph" in line
    assert "got 'sentence'" in line
    path = recipe_with_source(tmp_path, {"path": "qa.jsonl", "text_unit": "paragraph"})
    assert load_recipe(path).stage("sft").inputs["data"][0].text_unit == "paragraph"


def test_an_unknown_data_source_key_lists_the_accepted_ones(tmp_path):
    line = one_problem(tmp_path, {"path": "qa.jsonl", "colums": {}})
    assert ("unknown key(s) colums (a data source takes: path, weight, format, columns, on_bad_rows, text_unit, "
            "config, split)") in line
