"""Format conversion: every shape maps to the same messages; every mistake is located."""

import json

import pytest

from rlmed.data.formats import as_messages, as_text, detect_format, load_messages, load_texts
from rlmed.data.records import DataError, Record


def rec(row, line=5, path="data/train.jsonl"):
    return Record(path, line, row)


def test_messages_format_converts_unchanged():
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
            {"role": "assistant", "content": "A"}]
    assert as_messages(rec({"messages": msgs, "id": 3})) == msgs


def test_alpaca_with_input_history_and_system_converts():
    row = {"system": "S", "history": [["q1", "a1"], ["q2", "a2"]],
           "instruction": "Do it", "input": "ctx", "output": "done"}
    assert as_messages(rec(row)) == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"},
        {"role": "user", "content": "Do it\nctx"}, {"role": "assistant", "content": "done"},
    ]


def test_alpaca_with_empty_input_uses_instruction_only():
    row = {"instruction": "Do it", "input": "", "output": "done"}
    assert as_messages(rec(row)) == [
        {"role": "user", "content": "Do it"}, {"role": "assistant", "content": "done"},
    ]


def test_sharegpt_with_system_converts():
    row = {"system": "S", "conversations": [
        {"from": "human", "value": "q1"}, {"from": "gpt", "value": "a1"},
        {"from": "user", "value": "q2"}, {"from": "assistant", "value": "a2"}]}
    assert as_messages(rec(row)) == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"},
    ]


def m(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


MALFORMED = [
    ({"instruction": "x"}, "alpaca", "missing field 'output' (alpaca format)"),
    ({"output": "x"}, "alpaca", "missing field 'instruction' (alpaca format)"),
    ({"instruction": "  ", "output": "y"}, None, "field 'instruction' is empty"),
    ({"instruction": "x", "output": 3}, None, "field 'output' must be a string, got int"),
    ({"instruction": "x", "output": "y", "history": [["q"]]}, None,
     "history[0] must be a pair [user, assistant], got list of 1"),
    ({"messages": "hi"}, None, "field 'messages' must be a list, got str"),
    ({"messages": m(("user", "q"), ("assistant", "a"), ("user", 7))}, None,
     "messages[2].content must be a string, got int"),
    ({"messages": m(("user", "q"), ("assistant", " \n"))}, None, "messages[1].content is empty"),
    ({"messages": m(("doctor", "q"))}, None,
     "messages[0].role 'doctor' is not one of system, user, assistant"),
    ({"messages": [{"role": "user"}]}, None, "messages[0] is missing field 'content'"),
    ({"messages": ["hi"]}, None, "messages[0] must be an object, got str"),
    ({"messages": m(("user", "q"), ("assistant", "a"), ("user", "q"), ("user", "q"))}, None,
     "messages[3]: expected role 'assistant' after 'user', got 'user'"),
    ({"messages": m(("assistant", "a"))}, None,
     "messages[0]: expected role 'user' first, got 'assistant'"),
    ({"messages": m(("user", "q"), ("system", "s"))}, None,
     "messages[1]: a system message is only allowed first"),
    ({"messages": m(("user", "q"), ("assistant", "a"), ("user", "q"))}, None,
     "last message must be from the assistant, got 'user'"),
    ({"messages": []}, None, "dialogue has no messages"),
    ({"messages": m(("system", "s"))}, None, "dialogue has no user or assistant turns"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]},
     None, "conversations[1].from 'bot' is not one of human, user, gpt, assistant, system"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt"}]}, None,
     "conversations[1] is missing field 'value'"),
    ({"conversations": [{"from": "gpt", "value": "a"}]}, None,
     "conversations[0]: expected role 'user' first, got 'assistant'"),
    ({"text": "plain"}, None, "a text row cannot be used as a dialogue: found keys 'text'"),
    ({"prompt": "x", "answer": "y"}, None,
     "cannot detect the data format: found keys 'prompt', 'answer'; expected 'messages'"),
]


@pytest.mark.parametrize("row,fmt,reason", MALFORMED)
def test_malformed_row_raises_data_error_with_file_line_and_reason(row, fmt, reason):
    with pytest.raises(DataError) as info:
        as_messages(rec(row, line=42), fmt)
    message = str(info.value)
    assert message.startswith("data/train.jsonl:42: ")
    assert reason in message


def test_malformed_row_in_file_names_its_real_line(tmp_path):
    path = tmp_path / "chat.jsonl"
    good = {"messages": m(("user", "q"), ("assistant", "a"))}
    bad = {"messages": m(("user", "q"), ("user", "q"))}
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError) as info:
        load_messages(path)
    assert str(info.value) == (
        f"{path}:3: messages[1]: expected role 'assistant' after 'user', got 'user'"
    )


def test_prompt_mode_accepts_dialogue_ending_with_user():
    msgs = m(("system", "s"), ("user", "q"), ("assistant", "a"), ("user", "q2"))
    assert as_messages(rec({"messages": msgs}), require_final_assistant=False) == msgs
    alpaca = {"instruction": "Do", "input": "x"}
    assert as_messages(rec(alpaca), "alpaca", require_final_assistant=False) == m(("user", "Do\nx"))


def test_prompt_mode_rejects_dialogue_ending_with_assistant():
    with pytest.raises(DataError, match="last message must be from the user, got 'assistant'"):
        as_messages(rec({"messages": m(("user", "q"), ("assistant", "a"))}),
                    require_final_assistant=False)


def test_as_text_flattens_alpaca_without_system():
    row = {"system": "S", "instruction": "Do it", "input": "ctx", "output": "done"}
    assert as_text(rec(row)) == "Do it\nctx\ndone"


def test_as_text_flattens_messages_without_system():
    row = {"messages": m(("system", "S"), ("user", "q"), ("assistant", "a"),
                         ("user", "q2"), ("assistant", "a2"))}
    assert as_text(rec(row)) == "q\na\nq2\na2"


def test_as_text_returns_text_rows_and_rejects_empty_text():
    assert as_text(rec({"text": "hello"})) == "hello"
    with pytest.raises(DataError, match=r"data/train.jsonl:5: field 'text' is empty"):
        as_text(rec({"text": "  "}))


def test_load_texts_reads_txt_lines_or_paragraphs(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("one\n\ntwo\nlines\n")
    assert load_texts(path) == ["one", "two", "lines"]
    assert load_texts(path, text_unit="paragraph") == ["one", "two\nlines"]


@pytest.mark.parametrize("row,expected", [
    ({"messages": [], "text": "t"}, "messages"),
    ({"conversations": []}, "sharegpt"),
    ({"instruction": "i", "output": "o", "text": "t"}, "alpaca"),
    ({"instruction": "i"}, None),
    ({"text": "t"}, "text"),
    ({"prompt": "p"}, None),
])
def test_detect_format_picks_by_keys(row, expected):
    assert detect_format(row) == expected
