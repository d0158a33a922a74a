"""read_records: every row comes back with its file and line; every error is located."""

import json

import pytest

from rlmed.data.records import DataError, Record, read_records


def write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_bom_crlf_and_trailing_blank_lines_give_exact_rows(tmp_path):
    path = write(
        tmp_path / "d.jsonl",
        b'\xef\xbb\xbf{"text": "a"}\r\n{"text": "b", "n": 2}\r\n\r\n\r\n',
    )
    records = read_records(path)
    assert [r.row for r in records] == [{"text": "a"}, {"text": "b", "n": 2}]
    assert [r.line for r in records] == [1, 2]
    assert all(r.path == str(path) for r in records)


def test_blank_line_mid_file_is_skipped_and_later_lines_keep_numbers(tmp_path):
    path = write(tmp_path / "d.jsonl", b'{"a": 1}\n\n   \n{"a": 2}\n')
    records = read_records(path)
    assert [(r.line, r.row) for r in records] == [(1, {"a": 1}), (4, {"a": 2})]


def test_bad_json_error_names_file_and_line(tmp_path):
    path = write(tmp_path / "d.jsonl", b'{"a": 1}\n{"a": 2}\n{"a": 1 "b": 2}\n')
    with pytest.raises(DataError) as info:
        read_records(path)
    assert str(info.value).startswith(f"{path}:3: ")
    assert info.value.line == 3
    assert info.value.reason == "invalid JSON: Expecting ',' delimiter at column 9"


def test_non_object_line_is_rejected_with_its_type(tmp_path):
    path = write(tmp_path / "d.jsonl", b'{"a": 1}\n[1, 2]\n')
    with pytest.raises(DataError) as info:
        read_records(path)
    assert str(info.value) == f"{path}:2: expected a JSON object, got list"


def test_non_utf8_bytes_error_names_the_line(tmp_path):
    path = write(tmp_path / "d.jsonl", b'{"a": 1}\n{"a": "\xff"}\n')
    with pytest.raises(DataError) as info:
        read_records(path)
    assert info.value.line == 2
    assert str(info.value).startswith(f"{path}:2: ")
    assert "UTF-8" in info.value.reason


def test_json_array_records_carry_the_line_each_object_starts_on(tmp_path):
    rows = [{"a": 1}, {"b": [1, 2]}, {"c": "x"}]
    text = "[\n" + ",\n".join(json.dumps(r, indent=2) for r in rows) + "\n]\n"
    path = write(tmp_path / "d.json", text.encode())
    records = read_records(path)
    assert [r.row for r in records] == rows
    # Object 1 starts on line 2 and spans 3 lines; object 2 spans 6 lines.
    assert [r.line for r in records] == [2, 5, 11]
    lines = text.split("\n")
    for record in records:
        assert lines[record.line - 1].strip() == "{"


def test_json_array_with_bad_object_is_located(tmp_path):
    path = write(tmp_path / "d.json", b'[\n  {"a": 1},\n  {"a": }\n]\n')
    with pytest.raises(DataError) as info:
        read_records(path)
    assert str(info.value).startswith(f"{path}:3: invalid JSON: ")


def test_json_top_level_object_is_rejected_naming_the_file(tmp_path):
    path = write(tmp_path / "d.json", b'{"data": [{"a": 1}]}')
    with pytest.raises(DataError) as info:
        read_records(path)
    assert info.value.path == str(path)
    assert "top-level JSON array" in info.value.reason


def test_txt_paragraphs_become_text_rows_at_their_first_line(tmp_path):
    path = write(tmp_path / "d.txt", b"first para\nstill first\r\n\r\n\nsecond\n\n")
    records = read_records(path, text_unit="paragraph")
    assert [(r.line, r.row) for r in records] == [
        (1, {"text": "first para\nstill first"}),
        (5, {"text": "second"}),
    ]


def test_txt_lines_are_documents_by_default_as_in_datasets_and_medicalgpt(tmp_path):
    path = write(tmp_path / "d.txt", b"first doc\r\nsecond doc\n\n  \nthird doc\n")
    assert [(r.line, r.row) for r in read_records(path)] == [
        (1, {"text": "first doc"}), (2, {"text": "second doc"}), (5, {"text": "third doc"})]


def test_a_file_without_blank_lines_read_by_paragraph_says_it_became_one_document(tmp_path, caplog):
    path = write(tmp_path / "medicalgpt.txt", "".join(f"第{i}段很长的文本。" * 20 + "\n" for i in range(30)).encode())
    with caplog.at_level("WARNING"):
        records = read_records(path, text_unit="paragraph")
    assert len(records) == 1
    assert "no blank line in its 30 lines" in caplog.text and "text_unit: line" in caplog.text
    assert len(read_records(path)) == 30  # the default reads it as it is meant


def test_unsupported_extension_is_rejected(tmp_path):
    path = write(tmp_path / "d.xyz", b"{}")
    with pytest.raises(DataError) as info:
        read_records(path)
    assert str(info.value) == (
        f"{path}: unsupported data file extension '.xyz'; expected .jsonl, .json, .txt, .parquet, .csv, .tsv "
        "or a datasets save_to_disk folder"
    )


def test_missing_file_is_reported(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataError) as info:
        read_records(path)
    assert str(info.value) == f"{path}: file not found"
    assert info.value.line is None


@pytest.mark.parametrize("name,data", [("e.jsonl", b""), ("e.jsonl", b"\n \n"),
                                       ("e.json", b"[ ]"), ("e.txt", b"\n\n")])
def test_empty_file_has_no_rows(tmp_path, name, data):
    path = write(tmp_path / name, data)
    with pytest.raises(DataError) as info:
        read_records(path)
    assert str(info.value) == f"{path}: no rows"


def test_record_error_points_at_the_record():
    err = Record("x.jsonl", 7, {}).error("bad thing")
    assert isinstance(err, ValueError)
    assert (err.path, err.line, err.reason) == ("x.jsonl", 7, "bad thing")
    assert str(err) == "x.jsonl:7: bad thing"
