"""as_pair: every accepted preference shape gives the expected Pair; broken pairs are located DataErrors."""

from __future__ import annotations

import pytest

from rlmed.data.pairwise import Pair, as_pair
from rlmed.data.records import DataError, Record
from rlmed.data.sources import load_sources, pair
from rlmed.stages.base import DataSource
from tests.conftest import write_jsonl

USER = {"role": "user", "content": "宝宝发烧38.5℃怎么办？"}
SYSTEM = {"role": "system", "content": "你是儿科医生。"}
GOOD, BAD = "先观察精神状态，多喝水。", "马上输液。"


def rec(row: dict) -> Record:
    return Record("p.jsonl", 4, row)


def test_flat_row_with_system_gives_system_and_user_prompt():
    row = {"prompt": USER["content"], "chosen": GOOD, "rejected": BAD, "system": SYSTEM["content"]}
    assert as_pair(rec(row)) == Pair([SYSTEM, USER], GOOD, BAD)
    assert as_pair(rec({"prompt": USER["content"], "chosen": GOOD, "rejected": BAD})) == Pair([USER], GOOD, BAD)


@pytest.mark.parametrize("chosen,rejected", [
    (GOOD, BAD),
    ({"role": "assistant", "content": GOOD}, {"role": "assistant", "content": BAD}),
    ([{"role": "assistant", "content": GOOD}], [{"role": "assistant", "content": BAD}]),
    ({"from": "gpt", "value": GOOD}, [{"from": "gpt", "value": BAD}]),
], ids=["strings", "messages", "lists-of-one", "sharegpt"])
def test_conversation_row_accepts_each_reply_spelling(chosen, rejected):
    row = {"messages": [SYSTEM, USER], "chosen": chosen, "rejected": rejected}
    assert as_pair(rec(row)) == Pair([SYSTEM, USER], GOOD, BAD)


def test_sharegpt_conversation_and_trl_explicit_prompt_list():
    sharegpt = {"conversations": [{"from": "human", "value": USER["content"]}], "system": SYSTEM["content"],
                "chosen": {"from": "gpt", "value": GOOD}, "rejected": BAD}
    assert as_pair(rec(sharegpt)) == Pair([SYSTEM, USER], GOOD, BAD)
    explicit = {"prompt": [SYSTEM, USER], "chosen": [{"role": "assistant", "content": GOOD}],
                "rejected": [{"role": "assistant", "content": BAD}]}
    assert as_pair(rec(explicit), "pairwise") == Pair([SYSTEM, USER], GOOD, BAD)


def test_trl_implicit_prompt_takes_the_shared_prefix_as_prompt():
    history = [USER, {"role": "assistant", "content": "有没有咳嗽？"}, {"role": "user", "content": "没有"}]
    row = {"chosen": history + [{"role": "assistant", "content": GOOD}],
           "rejected": history + [{"role": "assistant", "content": BAD}]}
    got = as_pair(rec(row))
    assert got == Pair(history, GOOD, BAD)
    assert got.as_trl()["chosen"] == [{"role": "assistant", "content": GOOD}]


def test_mismatched_implicit_prefixes_are_reported():
    row = {"chosen": [USER, {"role": "assistant", "content": GOOD}],
           "rejected": [{"role": "user", "content": "别的问题"}, {"role": "assistant", "content": BAD}]}
    with pytest.raises(DataError) as info:
        as_pair(rec(row))
    assert str(info.value) == ("p.jsonl:4: chosen and rejected have different prompts (their messages differ at "
                               "index 0); in the implicit-prompt style both must repeat the same prompt")


def test_identical_chosen_and_rejected_are_reported():
    with pytest.raises(DataError) as info:
        as_pair(rec({"prompt": "问", "chosen": " 同一个回答 ", "rejected": "同一个回答"}))
    assert str(info.value) == "p.jsonl:4: chosen and rejected are identical"


@pytest.mark.parametrize("row,reason", [
    ({"prompt": "问", "chosen": "答"}, "missing field 'rejected' (pairwise format)"),
    ({"prompt": "问", "chosen": "", "rejected": "答"}, "field 'chosen' is empty"),
    ({"prompt": "问", "chosen": 3, "rejected": "答"},
     "field 'chosen' must be a string, an assistant message or a list of one, got int"),
    ({"messages": [USER], "chosen": [{"role": "assistant", "content": "a"}] * 2, "rejected": "b"},
     "field 'chosen' must be a string, an assistant message or a list of one, got a list of 2; for whole "
     "dialogues (trl's implicit-prompt style) leave out 'prompt', 'messages' and 'conversations'"),
    ({"messages": [USER], "chosen": {"role": "user", "content": "a"}, "rejected": "b"},
     "field 'chosen' must be an assistant message, got role 'user'"),
    ({"messages": [USER, {"role": "assistant", "content": "a"}], "chosen": "a", "rejected": "b"},
     "last message must be from the user, got 'assistant'"),
    ({"chosen": [USER], "rejected": [USER]}, "field 'chosen': last message must be from the assistant, got 'user'"),
    ({"chosen": "a", "rejected": "b"}, "cannot find the prompt: found keys 'chosen', 'rejected'"),
])
def test_malformed_pairs_name_the_line_and_the_field(row, reason):
    with pytest.raises(DataError) as info:
        as_pair(rec(row))
    assert str(info.value).startswith(f"p.jsonl:4: {reason}")


def test_a_dialogue_format_cannot_be_read_as_pairs():
    with pytest.raises(DataError, match="format 'alpaca' rows cannot be used as preference pairs"):
        as_pair(rec({"prompt": "问", "chosen": "a", "rejected": "b"}), "alpaca")


def test_identical_pairs_are_skipped_and_counted_with_on_bad_rows_skip(tmp_path):
    rows = [{"prompt": "问1", "chosen": "好", "rejected": "差"}, {"prompt": "问2", "chosen": "同", "rejected": "同"},
            {"prompt": "问3", "chosen": "好", "rejected": "差"}]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    result = load_sources([DataSource(str(path), format="pairwise", on_bad_rows="skip")], pair, seed=0)
    assert sorted(p.prompt[0]["content"] for p in result.items) == ["问1", "问3"]
    assert result.bad_rows == {str(path): 1}
    assert result.bad_row_reasons == [f"{path}:2: chosen and rejected are identical"]
