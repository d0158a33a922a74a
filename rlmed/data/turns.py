"""Single messages in either spelling (OpenAI ``{role, content}`` or ShareGPT ``{from, value}``), found outside
a row's ``messages``/``conversations`` list: a pair's ``chosen`` reply, a prompt given as a list, a whole
dialogue under ``chosen`` (trl's implicit-prompt style).

Preference datasets mix the two spellings freely, so each message is read by its own keys; validation and
error wording follow rlmed.data.formats.
"""

from __future__ import annotations

from typing import Any

from rlmed.data.formats import ROLES, SHAREGPT_ROLES, require_string
from rlmed.data.records import Record, type_name

__all__ = ["parse_turn", "parse_turns"]


def parse_turn(record: Record, item: Any, label: str) -> dict[str, str]:
    """One message as ``{"role", "content"}``; ``label`` names it in errors (e.g. ``chosen[0]``)."""
    if not isinstance(item, dict):
        raise record.error(f"{label} must be an object, got {type_name(item)}")
    if "role" in item:
        role_key, content_key, names = "role", "content", {r: r for r in ROLES}
    elif "from" in item:
        role_key, content_key, names = "from", "value", SHAREGPT_ROLES
    else:
        raise record.error(f"{label} is missing field 'role' (or 'from', ShareGPT style)")
    if content_key not in item:
        raise record.error(f"{label} is missing field '{content_key}'")
    speaker = item[role_key]
    if not isinstance(speaker, str):
        raise record.error(f"{label}.{role_key} must be a string, got {type_name(speaker)}")
    if speaker not in names:
        raise record.error(f"{label}.{role_key} '{speaker}' is not one of {', '.join(names)}")
    content = require_string(record, item[content_key], f"{label}.{content_key}")
    return {"role": names[speaker], "content": content}


def parse_turns(record: Record, items: Any, key: str) -> tuple[list[dict[str, str]], list[str]]:
    """The messages of the list in field ``key``, and the label of each (for rlmed.data.formats.check_order)."""
    if not isinstance(items, list):
        raise record.error(f"field '{key}' must be a list of messages, got {type_name(items)}")
    labels = [f"{key}[{i}]" for i in range(len(items))]
    return [parse_turn(record, item, label) for item, label in zip(items, labels)], labels
