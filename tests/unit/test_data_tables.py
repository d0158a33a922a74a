"""Parquet, CSV/TSV and save_to_disk folders read into the same rows as JSON Lines, with located errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from rlmed.data.formats import as_messages, as_text
from rlmed.data.pairwise import as_pair
from rlmed.data.records import DataError, Record, read_records, scan_records
from rlmed.data.sources import load_sources, source_records
from rlmed.stages.base import DataSource
from tests.conftest import write_jsonl

DIALOGUES = [
    {"messages": [{"role": "system", "content": "你是儿科医生。"}, {"role": "user", "content": "宝宝发烧38.5℃怎么办？"},
                  {"role": "assistant", "content": "先观察精神状态，多喝水。"}]},
    {"conversations": [{"from": "human", "value": "孩子咳嗽三天了"}, {"from": "gpt", "value": "有没有发热？"},
                       {"from": "human", "value": "没有发热"}, {"from": "gpt", "value": "可以先观察。"}],
     "system": "请耐心回答。"},
    {"instruction": "小儿腹泻怎么护理？", "input": "", "output": "用口服补液盐预防脱水。"},
    {"instruction": "这个剂量对吗？", "input": "孩子11公斤", "output": "请按体重计算。",
     "history": [["布洛芬怎么吃？", "按说明书给药。"]]},
]
TEXTS = DIALOGUES + [{"text": "手足口病多见于5岁以下儿童。"}]
# Arrow columns have one type, so string replies and message-list replies live in separate tables, as they
# do in real preference datasets.
FLAT_PAIRS = [
    {"prompt": "宝宝发烧怎么办？", "chosen": "先测体温，观察精神。", "rejected": "马上吃抗生素。", "system": "你是儿科医生。"},
    {"prompt": "孩子不爱吃饭", "chosen": "少量多餐。", "rejected": "强迫进食。"},
]
CHAT_PAIRS = [
    {"messages": [{"role": "user", "content": "孩子咳嗽"}], "chosen": [{"role": "assistant", "content": "多喝水。"}],
     "rejected": [{"role": "assistant", "content": "不用管。"}]},
    {"chosen": [{"role": "user", "content": "湿疹怎么护理？"}, {"role": "assistant", "content": "保湿。"}],
     "rejected": [{"role": "user", "content": "湿疹怎么护理？"}, {"role": "assistant", "content": "多洗澡。"}]},
]


def columns_of(rows: list[dict]) -> dict[str, list]:
    """Column-wise data with every row's keys; absent fields are nulls, as in any real mixed table."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return {k: [r.get(k) for r in rows] for k in keys}


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pydict(columns_of(rows)), path)
    return path


def write_saved(path: Path, rows: list[dict], split: str | None = None) -> Path:
    from datasets import Dataset, DatasetDict

    dataset = Dataset.from_dict(columns_of(rows))
    (DatasetDict({split: dataset}) if split else dataset).save_to_disk(str(path))
    return path


def write_csv(path: Path, rows: list[dict], delimiter: str = ",") -> Path:
    """Lists and objects as JSON cells (as json.dumps writes them), absent fields as empty cells."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(keys)
        for row in rows:
            writer.writerow([json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v
                             for v in (row.get(k, "") for k in keys)])
    return path


def twins(tmp_path: Path, rows: list[dict]) -> dict[str, Path]:
    return {
        "jsonl": write_jsonl(tmp_path / "d.jsonl", rows),
        "parquet": write_parquet(tmp_path / "d.parquet", rows),
        "csv": write_csv(tmp_path / "d.csv", rows),
        "tsv": write_csv(tmp_path / "d.tsv", rows, delimiter="\t"),
        "saved": write_saved(tmp_path / "saved", rows),
        "saved_dict": write_saved(tmp_path / "saved_dict", rows, split="train"),
    }


@pytest.mark.parametrize("convert,rows", [(as_messages, DIALOGUES), (as_text, TEXTS), (as_pair, FLAT_PAIRS),
                                          (as_pair, CHAT_PAIRS)],
                         ids=["as_messages", "as_text", "as_pair-flat", "as_pair-chat"])
def test_every_format_converts_to_the_same_rows_as_its_jsonl_twin(tmp_path, convert, rows):
    files = twins(tmp_path, rows)
    expected = [convert(r) for r in read_records(files["jsonl"])]
    assert len(expected) == len(rows)
    for kind, path in files.items():
        assert [convert(r) for r in read_records(path)] == expected, kind


def test_rows_are_located_by_row_number_or_physical_csv_line(tmp_path):
    files = twins(tmp_path, DIALOGUES)
    assert [r.line for r in read_records(files["parquet"])] == [1, 2, 3, 4]
    assert [r.line for r in read_records(files["saved"])] == [1, 2, 3, 4]
    assert [r.line for r in read_records(files["csv"])] == [2, 3, 4, 5]  # the header is line 1
    assert {r.path for r in read_records(files["saved_dict"])} == {str(files["saved_dict"] / "train")}


def test_parquet_list_columns_stay_lists_and_nulls_become_absent_fields(tmp_path):
    rows = [{"drug": "布洛芬", "indications": ["儿童发热", "轻中度疼痛"]}, {"disease": "发热", "symptoms": ["体温升高"]}]
    records = read_records(write_parquet(tmp_path / "kb.parquet", rows))
    assert [r.row for r in records] == rows


def test_csv_empty_cells_are_absent_and_multiline_cells_keep_later_line_numbers(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('instruction,input,output\n"第一行\n第二行",,答\n\n问,,"[注意] 见说明[1]"\n', encoding="utf-8")
    records = read_records(path)
    assert [(r.line, r.row) for r in records] == [
        (2, {"instruction": "第一行\n第二行", "output": "答"}),
        (5, {"instruction": "问", "output": "[注意] 见说明[1]"}),
    ]


@pytest.mark.parametrize("kind,line", [("jsonl", 3), ("parquet", 3), ("csv", 4), ("tsv", 4), ("saved", 3)])
def test_a_bad_row_fails_with_file_line_and_reason(tmp_path, kind, line):
    rows = [dict(DIALOGUES[2]), dict(DIALOGUES[2]), {"instruction": "问题", "input": "", "output": "  "}]
    path = twins(tmp_path, rows)[kind]
    with pytest.raises(DataError) as info:
        [as_messages(r) for r in read_records(path)]
    assert str(info.value) == f"{path}:{line}: field 'output' is empty"


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "csv", "saved", "saved_dict"])
def test_bad_rows_are_skipped_and_counted_with_on_bad_rows_skip(tmp_path, kind):
    good = DIALOGUES[2]
    rows = [good, {"instruction": "问", "output": " "}, good, {"text": "not a dialogue"}, good]
    path = twins(tmp_path, rows)[kind]
    with pytest.raises(DataError):
        load_sources([DataSource(str(path))], lambda r, f: as_messages(r, f), seed=0)
    result = load_sources([DataSource(str(path), on_bad_rows="skip")], lambda r, f: as_messages(r, f), seed=0)
    assert result.items == [as_messages(Record("x", 1, good))] * 3
    located = str(path / "train") if kind == "saved_dict" else str(path)
    assert result.bad_rows == {str(path): 2}
    assert len(result.bad_row_reasons) == 2 and result.bad_row_reasons[0].startswith(located + ":")


def test_an_invalid_jsonl_line_is_a_skippable_bad_row(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"\n[1, 2]\n{"text": "c"}\n', encoding="utf-8")
    rows = scan_records(path)
    assert [r.line for r in rows] == [1, 2, 3, 4]
    assert isinstance(rows[1], DataError) and str(rows[1]).startswith(f"{path}:2: invalid JSON")
    assert str(rows[2]) == f"{path}:3: expected a JSON object, got list"
    with pytest.raises(DataError, match=":2: invalid JSON"):
        read_records(path)
    result = load_sources([DataSource(str(path), on_bad_rows="skip")], lambda r, f: as_text(r, f), seed=0)
    assert sorted(result.items) == ["a", "c"] and result.bad_rows == {str(path): 2}


def test_a_csv_row_with_the_wrong_number_of_cells_is_a_bad_row(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text\n甲\n乙,多余\n丙\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_records(path)
    assert str(info.value) == f"{path}:3: row has 2 cells but the header has 1 columns (text)"
    result = load_sources([DataSource(str(path), on_bad_rows="skip")], lambda r, f: as_text(r, f), seed=0)
    assert sorted(result.items) == ["丙", "甲"] and result.bad_rows == {str(path): 1}


@pytest.mark.parametrize("name,content,reason", [
    ("d.xyz", "{}", "unsupported data file extension '.xyz'"),
    ("d.json", '[{"text": "a"}, {"text": ]', "invalid JSON"),
    ("d.parquet", "not parquet", "not a readable Parquet file"),
    ("d.csv", 'text\n"unclosed\n', "invalid CSV"),
    ("dup.csv", "text,text\na,b\n", "header: column 'text' appears twice"),
])
def test_unreadable_files_fail_even_with_on_bad_rows_skip(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=reason):
        load_sources([DataSource(str(path), on_bad_rows="skip")], lambda r, f: as_text(r, f), seed=0)


def test_missing_file_and_plain_directory_fail(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_records(tmp_path / "nope.parquet")
    with pytest.raises(DataError, match="save_to_disk"):
        read_records(tmp_path)


def test_every_row_bad_with_skip_still_fails(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": " "}, {"text": ""}])
    with pytest.raises(DataError, match="every row is bad \\(2 skipped"):
        load_sources([DataSource(str(path), on_bad_rows="skip")], lambda r, f: as_text(r, f), seed=0)


def test_dataset_dict_uses_train_or_its_only_split_and_refuses_to_guess(tmp_path):
    from datasets import Dataset, DatasetDict

    only = write_saved(tmp_path / "only", [{"text": "a"}], split="validation")
    assert [r.path for r in read_records(only)] == [str(only / "validation")]
    both = tmp_path / "both"
    DatasetDict({"a": Dataset.from_dict({"text": ["x"]}), "b": Dataset.from_dict({"text": ["y"]})}).save_to_disk(
        str(both))
    with pytest.raises(DataError, match="splits a, b and no 'train' split"):
        read_records(both)


def test_a_hub_dataset_id_fails_clearly_without_a_hub():
    with pytest.raises(DataError) as info:
        source_records(DataSource("some-org/some-dataset", is_local=False))
    assert str(info.value).startswith("some-org/some-dataset: not a local file, and the Hub dataset could not be")
    assert "point the recipe at the local copy" in str(info.value)


def test_a_limit_reads_only_the_head_of_a_source(tmp_path):
    """evaluate's max_rows: the rows past the cap are never read, so a broken line there does not matter."""
    path = tmp_path / "big.jsonl"
    path.write_text("".join(json.dumps({"question": f"q{i}", "answer": "a"}) + "\n" for i in range(5)) + "{broken\n",
                    encoding="utf-8")
    head = source_records(DataSource(str(path)), limit=3)
    assert [(r.line, r.row["question"]) for r in head] == [(1, "q0"), (2, "q1"), (3, "q2")]
    assert len(source_records(DataSource(str(path)), limit=5)) == 5
    with pytest.raises(DataError, match="big.jsonl:6"):
        source_records(DataSource(str(path)))
