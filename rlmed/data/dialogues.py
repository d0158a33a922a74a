"""Doctor dialogues as prompts with the real doctor's reply, for AI-feedback scoring and RL stages.

The AI-feedback methods (HuatuoGPT's RLAIF, DISC-MedLLM's judge) score a model's reply to a patient against
what the real doctor said, so each prompt carries that reply as its ``reference``. Rows may be:

- ``{"messages" | "conversations": [... ending with the patient], "reference": "..."}`` → one prompt;
- a whole dialogue ``{"messages" | "conversations": [user, assistant, user, assistant, ...]}`` with no
  reference → one prompt per doctor turn: the history up to that patient turn, and that doctor reply;
- flat ``{"prompt" | "question": "...", "reference" | "answer": "...", "system": "..."}`` (system optional);
- alpaca ``{"instruction", "input", "output", "history"}``: the output is the reference of the last turn;
- HealthBench ``{"prompt": [messages ending with the patient], "rubrics": [...], "prompt_id"}``: the reference is
  optional when the row has a rubric.

A row's own ``rubrics`` (HealthBench's layout, rlmed.data.rubric_rows) and ``prompt_id`` travel with its prompt
as ``metadata``, which the sampling stages hand to the reward source (reward.rubric.RubricJudge reads them).

``answer`` is read where ``reference`` is absent; a recipe's ``columns:`` maps any other name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlmed.data.formats import (DOCTOR, PAIRWISE, SOURCE_FORMATS, as_messages, describe_keys, optional_string,
                                require_string)
from rlmed.data.records import DataError, Record
from rlmed.data.rubric_rows import row_messages, row_rubric_metadata

__all__ = ["DoctorPrompt", "as_doctor_prompts"]

_SHAPES = ("'messages' or 'conversations' (with 'reference', or a whole dialogue), 'prompt' or 'question' "
           "with 'reference' or 'answer', or 'instruction' and 'output'")


@dataclass
class DoctorPrompt:
    """Messages ending with the patient's (user) turn, the real doctor's reply to it (None only for a row graded
    by its own rubric), which doctor reply of its dialogue that is (1 for the first), and what the reward source
    reads from the row besides (its "rubrics" and "prompt_id"; empty for most rows)."""

    messages: list[dict[str, str]]
    reference: str | None
    turn: int
    metadata: dict[str, Any] = field(default_factory=dict)


def _reference_key(record: Record) -> str | None:
    return next((k for k in ("reference", "answer") if k in record.row), None)


def _user_turns(messages: list[dict[str, str]]) -> int:
    return sum(1 for m in messages if m["role"] == "user")


def as_doctor_prompts(record: Record, fmt: str | None = None) -> list[DoctorPrompt]:
    """Convert a doctor-dialogue row (any shape in the module docstring) to validated prompts."""
    if fmt is not None and fmt not in SOURCE_FORMATS:
        raise ValueError(f"unknown data format {fmt!r} for doctor prompts; expected {DOCTOR!r}")
    if fmt in ("text", PAIRWISE):
        raise record.error(f"format '{fmt}' rows cannot be used as doctor prompts; give dialogues or prompts "
                           f"with a 'reference' (format: {DOCTOR})")
    row = record.row
    ref_key = _reference_key(record)
    metadata = row_rubric_metadata(record)
    if isinstance(row.get("prompt"), list) and fmt in (None, DOCTOR):
        messages = row_messages(record, row["prompt"], "prompt")
        if ref_key is None and not metadata:
            raise record.error("missing field 'reference' (a conversation given as 'prompt' needs the doctor's "
                               "reply, or 'rubrics' to be graded by)")
        reference = require_string(record, row[ref_key], f"field '{ref_key}'") if ref_key is not None else None
        return [DoctorPrompt(messages, reference, _user_turns(messages), metadata)]
    prompts = _prompts(record, fmt, ref_key)
    if metadata and len(prompts) > 1:
        raise record.error(f"a row with 'rubrics' must give one prompt, but this dialogue gives {len(prompts)} "
                           f"(one per doctor turn); give 'reference' for its last patient turn, or split it")
    for prompt in prompts:
        prompt.metadata = metadata
    return prompts


def _prompts(record: Record, fmt: str | None, ref_key: str | None) -> list[DoctorPrompt]:
    row = record.row
    if fmt in ("messages", "sharegpt") or (fmt in (None, DOCTOR) and ("messages" in row or "conversations" in row)):
        dialogue_fmt = fmt if fmt in ("messages", "sharegpt") else "messages" if "messages" in row else "sharegpt"
        if ref_key is not None:
            messages = as_messages(record, dialogue_fmt, require_final_assistant=False)
            reference = require_string(record, row[ref_key], f"field '{ref_key}'")
            return [DoctorPrompt(messages, reference, _user_turns(messages))]
        return _expand(record, dialogue_fmt)
    if fmt == "alpaca" or (fmt in (None, DOCTOR) and "instruction" in row):
        messages = as_messages(record, "alpaca")
        return [DoctorPrompt(messages[:-1], messages[-1]["content"], _user_turns(messages))]
    prompt_key = next((k for k in ("prompt", "question") if k in row), None)
    if prompt_key is None:
        raise record.error(f"cannot detect a doctor prompt: found keys {describe_keys(row)}; expected {_SHAPES}")
    if ref_key is None and "rubrics" not in row:
        raise record.error("missing field 'reference' (doctor format; 'answer' is read too)")
    messages = []
    system = optional_string(record, "system")
    if system.strip():
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": require_string(record, row[prompt_key], f"field '{prompt_key}'")})
    reference = require_string(record, row[ref_key], f"field '{ref_key}'") if ref_key is not None else None
    return [DoctorPrompt(messages, reference, 1)]


def _expand(record: Record, dialogue_fmt: str) -> list[DoctorPrompt]:
    """One prompt per doctor turn of a whole dialogue: the history before it, and the reply as reference."""
    try:
        messages = as_messages(record, dialogue_fmt, require_final_assistant=True)
    except DataError as exc:
        if not exc.reason.startswith("last message must be from the assistant"):
            raise
        # The dialogue ends with a patient turn nobody answered: without a reference it cannot be a prompt.
        raise record.error(f"{exc.reason}; a dialogue without 'reference' must end with the doctor's reply "
                           f"(give 'reference' to use its last patient turn as a prompt)") from None
    prompts, turn = [], 0
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            turn += 1
            prompts.append(DoctorPrompt(messages[:i], message["content"], turn))
    return prompts
