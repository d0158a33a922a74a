"""as_doctor_prompts: dialogues become prompts with the real doctor's reply as reference, one per doctor turn."""

from __future__ import annotations

import pytest

from rlmed.data.dialogues import DoctorPrompt, as_doctor_prompts
from rlmed.data.records import DataError, Record, read_records
from tests.conftest import SAMPLE


def rec(row: dict) -> Record:
    return Record("d.jsonl", 2, row)


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def doctor(text: str) -> dict:
    return {"role": "assistant", "content": text}


SYSTEM = {"role": "system", "content": "你是儿科医生。"}
DIALOGUE = [SYSTEM, user("宝宝发烧两天"), doctor("体温多少？"), user("38.5℃"), doctor("精神怎么样？"),
            user("精神还好"), doctor("可以先在家观察，多喝水。")]


def test_a_three_doctor_turn_dialogue_expands_into_three_prompts_with_their_histories():
    prompts = as_doctor_prompts(rec({"messages": DIALOGUE}))
    assert prompts == [
        DoctorPrompt(DIALOGUE[:2], "体温多少？", 1),
        DoctorPrompt(DIALOGUE[:4], "精神怎么样？", 2),
        DoctorPrompt(DIALOGUE[:6], "可以先在家观察，多喝水。", 3),
    ]


def test_a_sharegpt_dialogue_expands_the_same_way():
    row = {"conversations": [{"from": "human", "value": "宝宝发烧两天"}, {"from": "gpt", "value": "体温多少？"},
                             {"from": "human", "value": "38.5℃"}, {"from": "gpt", "value": "精神怎么样？"}],
           "system": SYSTEM["content"]}
    assert [(p.messages, p.reference, p.turn) for p in as_doctor_prompts(rec(row))] == [
        (DIALOGUE[:2], "体温多少？", 1), (DIALOGUE[:4], "精神怎么样？", 2)]


def test_an_explicit_reference_row_is_one_prompt_counted_by_its_patient_turns():
    row = {"messages": DIALOGUE[:4], "reference": "精神怎么样？"}
    assert as_doctor_prompts(rec(row)) == [DoctorPrompt(DIALOGUE[:4], "精神怎么样？", 2)]
    assert as_doctor_prompts(rec({"messages": DIALOGUE[:4], "answer": "好"}), "doctor")[0].reference == "好"


@pytest.mark.parametrize("row,messages", [
    ({"prompt": "孩子咳嗽三天", "reference": "有没有发热？"}, [user("孩子咳嗽三天")]),
    ({"question": "孩子咳嗽三天", "answer": "有没有发热？", "system": SYSTEM["content"]},
     [SYSTEM, user("孩子咳嗽三天")]),
])
def test_flat_rows_are_one_prompt(row, messages):
    assert as_doctor_prompts(rec(row)) == [DoctorPrompt(messages, "有没有发热？", 1)]


def test_an_alpaca_row_uses_its_output_as_the_reference():
    row = {"instruction": "孩子咳嗽三天", "output": "有没有发热？", "history": [["你好", "请讲"]]}
    assert as_doctor_prompts(rec(row)) == [
        DoctorPrompt([user("你好"), doctor("请讲"), user("孩子咳嗽三天")], "有没有发热？", 2)]


@pytest.mark.parametrize("row,reason", [
    ({"messages": DIALOGUE[:4]}, "last message must be from the assistant, got 'user'; a dialogue without "
                                 "'reference' must end with the doctor's reply"),
    ({"messages": DIALOGUE[:3], "reference": "x"}, "last message must be from the user, got 'assistant'"),
    ({"messages": DIALOGUE[:2], "reference": " "}, "field 'reference' is empty"),
    ({"prompt": "孩子咳嗽"}, "missing field 'reference' (doctor format; 'answer' is read too)"),
    ({"text": "x"}, "cannot detect a doctor prompt: found keys 'text'"),
])
def test_malformed_rows_name_the_line_and_the_reason(row, reason):
    with pytest.raises(DataError) as info:
        as_doctor_prompts(rec(row))
    assert str(info.value).startswith(f"d.jsonl:2: {reason}")


def test_sample_doctor_dialogues_all_convert():
    records = list(read_records(SAMPLE / "doctor_dialogues.jsonl"))
    prompts = [p for r in records for p in as_doctor_prompts(r)]
    assert len(records) == 400 and len(prompts) == len(records) and all(p.messages[-1]["role"] == "user" and p.reference for p in prompts)


RUBRIC = [{"criterion": "说明何时就医", "points": 5, "tags": ["axis:completeness"]},
          {"criterion": "建议使用抗生素", "points": -4}]


def test_a_healthbench_row_is_one_prompt_graded_by_its_own_rubric_without_a_reference():
    [prompt] = as_doctor_prompts(rec({"prompt_id": "hb-7", "prompt": [SYSTEM, user("孩子高烧不退")], "rubrics": RUBRIC,
                                      "example_tags": ["theme:emergency"]}))
    assert prompt.messages == [SYSTEM, user("孩子高烧不退")] and prompt.reference is None and prompt.turn == 1
    assert prompt.metadata == {"prompt_id": "hb-7", "rubrics": [{**RUBRIC[0]}, {**RUBRIC[1], "tags": []}]}


def test_a_rubric_travels_with_any_one_prompt_row_and_without_an_id_gets_its_file_and_line():
    [flat] = as_doctor_prompts(rec({"question": "孩子咳嗽", "answer": "多喝水", "rubrics": RUBRIC}))
    [no_reference] = as_doctor_prompts(rec({"question": "孩子咳嗽", "rubrics": RUBRIC}))
    assert flat.reference == "多喝水" and no_reference.reference is None
    assert flat.metadata["prompt_id"] == no_reference.metadata["prompt_id"] == "d.jsonl:2"
    assert as_doctor_prompts(rec({"question": "孩子咳嗽", "answer": "多喝水"}))[0].metadata == {}


@pytest.mark.parametrize("row,reason", [
    ({"messages": DIALOGUE, "rubrics": RUBRIC}, "a row with 'rubrics' must give one prompt, but this dialogue gives 3"),
    ({"prompt": [user("x")], "rubrics": [{"criterion": "y", "points": "5"}]},
     "rubrics[0] should be {criterion: text, points: number, tags: [text]}"),
    ({"prompt": [user("x")], "rubrics": [{"criterion": "y", "points": -1}]}, "no rubric item has positive points"),
    ({"prompt": [user("x")], "rubrics": []}, "'rubrics' should be a non-empty list"),
    ({"prompt": [user("x"), doctor("y")], "rubrics": RUBRIC}, "the conversation should end with a user message"),
    ({"prompt": [user("x")]}, "missing field 'reference' (a conversation given as 'prompt' needs the doctor's reply, "
                              "or 'rubrics' to be graded by)"),
])
def test_bad_rubric_rows_name_the_line_and_the_reason(row, reason):
    with pytest.raises(DataError) as info:
        as_doctor_prompts(rec(row))
    assert str(info.value).startswith(f"d.jsonl:2: {reason}")
