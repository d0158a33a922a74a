"""Turn the row shapes users bring (text, alpaca, sharegpt, messages) into one form.

Dialogue rows become a list of ``{"role", "content"}`` messages validated for
structure (system first, then user/assistant alternating), and any row can be
flattened into plain text for pretraining. Every problem is a DataError that
names the file, the line and the offending field, because data mistakes are
the most common reason a training run fails late.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rlmed.data.records import Record, progress_disabled, read_records, type_name

logger = logging.getLogger(__name__)

__all__ = ["FORMATS", "SOURCE_FORMATS", "detect_format", "as_messages", "as_text", "load_messages", "load_texts",
           "require_string", "optional_string", "check_order", "describe_keys"]

FORMATS = ("text", "alpaca", "sharegpt", "messages")
# Formats of whole inputs rather than of single rows: preference pairs (rlmed.data.pairwise) and prompts with
# the real doctor's reply (rlmed.data.dialogues). A recipe's `format:` may name any of SOURCE_FORMATS.
PAIRWISE = "pairwise"
DOCTOR = "doctor"
SOURCE_FORMATS = FORMATS + (PAIRWISE, DOCTOR)

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant",
    "system": "system",
}

_EXPECTED_DIALOGUE = (
    "'messages' (messages format), 'conversations' (sharegpt format) "
    "or 'instruction' and 'output' (alpaca format)"
)
_EXPECTED_ANY = _EXPECTED_DIALOGUE.replace(" or ", ", ") + " or 'text' (text format)"


def detect_format(row: dict) -> str | None:
    """Guess a row's format from its keys; None when no known shape matches.

    Order matters because some datasets carry extra keys (e.g. a 'text' copy
    next to 'messages'); the richer structure wins.
    """
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "text" in row:
        return "text"
    return None


def describe_keys(row: dict) -> str:
    return ", ".join(f"'{k}'" for k in row) if row else "no keys"


def _resolve(record: Record, fmt: str | None) -> str:
    if fmt in (PAIRWISE, DOCTOR):
        # A recipe fed pairs or doctor prompts to an input that reads dialogues or text: the user's to fix.
        raise record.error(f"format '{fmt}' rows cannot be used here; this input takes "
                           f"{', '.join(FORMATS)} rows")
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"unknown data format {fmt!r}; expected one of {', '.join(FORMATS)}")
    found = fmt or detect_format(record.row)
    if found is None:
        raise record.error(
            f"cannot detect the data format: found keys {describe_keys(record.row)}; "
            f"expected {_EXPECTED_ANY}"
        )
    return found


def require_string(record: Record, value: Any, label: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise record.error(f"{label} must be a string, got {type_name(value)}")
    if not allow_empty and not value.strip():
        raise record.error(f"{label} is empty")
    return value


def _field(record: Record, key: str, fmt: str) -> Any:
    if key not in record.row:
        raise record.error(f"missing field '{key}' ({fmt} format)")
    return record.row[key]


def _list_field(record: Record, key: str, fmt: str) -> list:
    value = _field(record, key, fmt)
    if not isinstance(value, list):
        raise record.error(f"field '{key}' must be a list, got {type_name(value)}")
    return value


def optional_string(record: Record, key: str) -> str:
    """An optional text field: absent, null and empty all mean 'not given'."""
    value = record.row.get(key)
    if value is None:
        return ""
    return require_string(record, value, f"field '{key}'", allow_empty=True)


def _from_messages(record: Record) -> tuple[list[dict], list[str]]:
    items = _list_field(record, "messages", "messages")
    messages, labels = [], []
    for i, item in enumerate(items):
        label = f"messages[{i}]"
        if not isinstance(item, dict):
            raise record.error(f"{label} must be an object, got {type_name(item)}")
        for key in ("role", "content"):
            if key not in item:
                raise record.error(f"{label} is missing field '{key}'")
        role = item["role"]
        if not isinstance(role, str):
            raise record.error(f"{label}.role must be a string, got {type_name(role)}")
        if role not in ROLES:
            raise record.error(f"{label}.role '{role}' is not one of {', '.join(ROLES)}")
        content = require_string(record, item["content"], f"{label}.content")
        messages.append({"role": role, "content": content})
        labels.append(label)
    return messages, labels


def _from_sharegpt(record: Record) -> tuple[list[dict], list[str]]:
    items = _list_field(record, "conversations", "sharegpt")
    messages, labels = [], []
    system = optional_string(record, "system")
    if system.strip():
        messages.append({"role": "system", "content": system})
        labels.append("field 'system'")
    for i, item in enumerate(items):
        label = f"conversations[{i}]"
        if not isinstance(item, dict):
            raise record.error(f"{label} must be an object, got {type_name(item)}")
        for key in ("from", "value"):
            if key not in item:
                raise record.error(f"{label} is missing field '{key}'")
        speaker = item["from"]
        if not isinstance(speaker, str):
            raise record.error(f"{label}.from must be a string, got {type_name(speaker)}")
        if speaker not in SHAREGPT_ROLES:
            raise record.error(
                f"{label}.from '{speaker}' is not one of {', '.join(SHAREGPT_ROLES)}"
            )
        content = require_string(record, item["value"], f"{label}.value")
        messages.append({"role": SHAREGPT_ROLES[speaker], "content": content})
        labels.append(label)
    return messages, labels


def _from_alpaca(record: Record, with_output: bool) -> tuple[list[dict], list[str]]:
    instruction = require_string(record, _field(record, "instruction", "alpaca"), "field 'instruction'")
    extra = optional_string(record, "input")
    messages, labels = [], []
    system = optional_string(record, "system")
    if system.strip():
        messages.append({"role": "system", "content": system})
        labels.append("field 'system'")
    history = record.row.get("history")
    if history is not None:
        if not isinstance(history, list):
            raise record.error(f"field 'history' must be a list, got {type_name(history)}")
        for i, pair in enumerate(history):
            if not isinstance(pair, list) or len(pair) != 2:
                got = f"list of {len(pair)}" if isinstance(pair, list) else type_name(pair)
                raise record.error(f"history[{i}] must be a pair [user, assistant], got {got}")
            for j, role in enumerate(("user", "assistant")):
                label = f"history[{i}][{j}]"
                messages.append({"role": role, "content": require_string(record, pair[j], label)})
                labels.append(label)
    user = instruction + ("\n" + extra if extra.strip() else "")
    messages.append({"role": "user", "content": user})
    labels.append("field 'instruction'")
    if with_output:
        output = require_string(record, _field(record, "output", "alpaca"), "field 'output'")
        messages.append({"role": "assistant", "content": output})
        labels.append("field 'output'")
    return messages, labels


def check_order(
    record: Record, messages: list[dict], labels: list[str], require_final_assistant: bool
) -> None:
    """Enforce: optional system first, then user/assistant alternating from user."""
    previous: str | None = None
    for message, label in zip(messages, labels):
        role = message["role"]
        if role == "system":
            if previous is not None:
                raise record.error(f"{label}: a system message is only allowed first")
        else:
            expected = "assistant" if previous == "user" else "user"
            if role != expected:
                after = f"after '{previous}'" if previous else "first"
                raise record.error(
                    f"{label}: expected role '{expected}' {after}, got '{role}'"
                )
        previous = role
    if previous is None or previous == "system":
        raise record.error("dialogue has no user or assistant turns")
    final = "assistant" if require_final_assistant else "user"
    if previous != final:
        raise record.error(f"last message must be from the {final}, got '{previous}'")


def as_messages(
    record: Record, fmt: str | None = None, require_final_assistant: bool = True
) -> list[dict]:
    """Convert a dialogue row (alpaca, sharegpt or messages) to validated messages.

    ``fmt=None`` detects the format per row. With ``require_final_assistant``
    the dialogue must end with an assistant turn (training examples); without
    it, it must end with a user turn (prompts for generation). For alpaca rows
    in prompt mode the 'output' field is optional and left out, since the
    format already separates the prompt from the answer.
    """
    found = _resolve(record, fmt)
    if found == "messages":
        messages, labels = _from_messages(record)
    elif found == "sharegpt":
        messages, labels = _from_sharegpt(record)
    elif found == "alpaca":
        messages, labels = _from_alpaca(record, with_output=require_final_assistant)
    else:
        raise record.error(
            f"a {found} row cannot be used as a dialogue: found keys {describe_keys(record.row)}; "
            f"expected {_EXPECTED_DIALOGUE}"
        )
    if not messages:
        raise record.error("dialogue has no messages")
    check_order(record, messages, labels, require_final_assistant)
    return messages


def as_text(record: Record, fmt: str | None = None) -> str:
    """Return a row as pretraining text.

    Text rows give their text; dialogue rows give their user and assistant
    contents joined by newlines (system prompts dropped), so instruction data
    can be mixed into pretraining as continuous text.
    """
    found = _resolve(record, fmt)
    if found == "text":
        return require_string(record, _field(record, "text", "text"), "field 'text'")
    messages = as_messages(record, found, require_final_assistant=True)
    return "\n".join(m["content"] for m in messages if m["role"] != "system")


def _load(path: str | Path, convert, what: str, text_unit: str = "line") -> list:
    records = read_records(path, text_unit)
    out = []
    for record in tqdm(records, desc=f"checking {Path(str(path)).name}", unit="row",
                       disable=progress_disabled(len(records))):
        out.append(convert(record))
    logger.info("loaded %d %s from %s", len(out), what, path)
    return out


def load_messages(
    path: str | Path, fmt: str | None = None, require_final_assistant: bool = True
) -> list[list[dict]]:
    """Read a file of dialogue rows into message lists; the first bad row raises."""
    return _load(path, lambda r: as_messages(r, fmt, require_final_assistant), "dialogues")


def load_texts(path: str | Path, fmt: str | None = None, text_unit: str = "line") -> list[str]:
    """Read a file of rows (any format) into pretraining texts; the first bad row raises. A .txt file gives one
    text per line, or per blank-line-separated paragraph with text_unit="paragraph"."""
    return _load(path, lambda r: as_text(r, fmt), "texts", text_unit)

