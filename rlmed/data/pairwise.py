"""Preference pairs (a prompt, a chosen reply and a rejected one) for reward-model and DPO-style stages.

Preference data comes in several shapes, and rlmed reads the common ones into one :class:`Pair`:

- flat: ``{"prompt": "...", "chosen": "...", "rejected": "...", "system": "..."}`` (system optional);
- conversation: ``{"messages" | "conversations": [... ending with the user], "chosen": ..., "rejected": ...}``
  or ``{"prompt": [messages ...], ...}`` (trl's explicit-prompt style); here ``chosen``/``rejected`` may each
  be a string, one assistant message (``{role, content}`` or ShareGPT ``{from: gpt, value}``) or a list of one;
- implicit prompt (trl): ``{"chosen": [messages ..., assistant], "rejected": [messages ..., assistant]}``,
  whose shared prefix is the prompt.

A pair whose two replies are the same teaches nothing and usually means a broken export, so it is a DataError
like any other bad row (reported, or skipped and counted under ``on_bad_rows: skip``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlmed.data.formats import (PAIRWISE, SOURCE_FORMATS, as_messages, check_order, describe_keys, optional_string,
                                require_string)
from rlmed.data.records import Record, type_name
from rlmed.data.turns import parse_turn, parse_turns

__all__ = ["Pair", "as_pair"]

_SHAPES = ("'prompt', 'messages' or 'conversations' with 'chosen' and 'rejected', or 'chosen' and 'rejected' "
           "as whole dialogues ending with the assistant (trl's implicit-prompt style)")


@dataclass
class Pair:
    """A prompt (messages ending with the user, optional system first) and two replies to it."""

    prompt: list[dict[str, str]]
    chosen: str
    rejected: str

    def as_trl(self) -> dict[str, Any]:
        """trl's conversational preference row (explicit prompt), as its DPO and reward trainers read it."""
        return {"prompt": self.prompt,
                "chosen": [{"role": "assistant", "content": self.chosen}],
                "rejected": [{"role": "assistant", "content": self.rejected}]}


def as_pair(record: Record, fmt: str | None = None) -> Pair:
    """Convert a preference row (any shape in the module docstring) to a validated :class:`Pair`."""
    if fmt in SOURCE_FORMATS and fmt != PAIRWISE:
        raise record.error(f"format '{fmt}' rows cannot be used as preference pairs; give rows with 'chosen' "
                           f"and 'rejected' (format: {PAIRWISE})")
    if fmt not in (None, PAIRWISE):
        raise ValueError(f"unknown data format {fmt!r} for preference pairs; expected {PAIRWISE!r}")
    row = record.row
    for key in ("chosen", "rejected"):
        if key not in row:
            raise record.error(f"missing field '{key}' (pairwise format)")
    if "messages" in row or "conversations" in row:
        prompt = as_messages(record, "messages" if "messages" in row else "sharegpt", require_final_assistant=False)
        chosen, rejected = _reply(record, "chosen"), _reply(record, "rejected")
    elif "prompt" in row:
        prompt = _prompt_field(record)
        chosen, rejected = _reply(record, "chosen"), _reply(record, "rejected")
    elif isinstance(row["chosen"], list) and isinstance(row["rejected"], list):
        prompt, chosen, rejected = _implicit(record)
    else:
        raise record.error(f"cannot find the prompt: found keys {describe_keys(row)}; expected {_SHAPES}")
    if chosen.strip() == rejected.strip():
        raise record.error("chosen and rejected are identical")
    return Pair(prompt=prompt, chosen=chosen, rejected=rejected)


def _prompt_field(record: Record) -> list[dict[str, str]]:
    """The prompt of a row with 'prompt': a string (the user's message) or a list of messages."""
    value = record.row["prompt"]
    system = optional_string(record, "system")
    if isinstance(value, str):
        messages = [{"role": "user", "content": require_string(record, value, "field 'prompt'")}]
        labels = ["field 'prompt'"]
    elif isinstance(value, list):
        messages, labels = parse_turns(record, value, "prompt")
    else:
        raise record.error(f"field 'prompt' must be a string or a list of messages, got {type_name(value)}")
    if system.strip():
        if messages and messages[0]["role"] == "system":
            raise record.error("two system prompts: give it in field 'system' or as the first message, not both")
        messages = [{"role": "system", "content": system}] + messages
        labels = ["field 'system'"] + labels
    check_order(record, messages, labels, require_final_assistant=False)
    return messages


def _reply(record: Record, key: str) -> str:
    """A reply given as a string, one assistant message, or a list holding one."""
    value, label = record.row[key], f"field '{key}'"
    expected = "a string, an assistant message or a list of one"
    if isinstance(value, list):
        if len(value) != 1:
            hint = ("; for whole dialogues (trl's implicit-prompt style) leave out 'prompt', 'messages' and "
                    "'conversations'") if len(value) > 1 else ""
            raise record.error(f"{label} must be {expected}, got a list of {len(value)}{hint}")
        value, label = value[0], f"{key}[0]"
    if isinstance(value, str):
        return require_string(record, value, label)
    if isinstance(value, dict):
        message = parse_turn(record, value, label)
        if message["role"] != "assistant":
            raise record.error(f"{label} must be an assistant message, got role '{message['role']}'")
        return message["content"]
    raise record.error(f"{label} must be {expected}, got {type_name(value)}")


def _implicit(record: Record) -> tuple[list[dict[str, str]], str, str]:
    """trl's implicit prompt: two whole dialogues that agree up to their last (assistant) message."""
    chosen, labels = parse_turns(record, record.row["chosen"], "chosen")
    rejected, _ = parse_turns(record, record.row["rejected"], "rejected")
    for key, messages in (("chosen", chosen), ("rejected", rejected)):
        if not messages or messages[-1]["role"] != "assistant":
            got = f"'{messages[-1]['role']}'" if messages else "no messages"
            raise record.error(f"field '{key}': last message must be from the assistant, got {got}")
    if chosen[:-1] != rejected[:-1]:
        differ = next((i for i, (a, b) in enumerate(zip(chosen[:-1], rejected[:-1])) if a != b),
                      min(len(chosen), len(rejected)) - 1)
        raise record.error(f"chosen and rejected have different prompts (their messages differ at index {differ}); "
                           f"in the implicit-prompt style both must repeat the same prompt")
    prompt = chosen[:-1]
    check_order(record, prompt, labels[:-1], require_final_assistant=False)
    return prompt, chosen[-1]["content"], rejected[-1]["content"]
