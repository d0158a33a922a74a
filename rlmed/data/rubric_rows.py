"""A data row's own rubric (HealthBench's `rubrics` layout), read once for every stage that takes one.

HealthBench rows carry `rubrics: [{criterion, points, tags}]` (negative points for things to avoid) and a
`prompt_id`; "Rubrics as Rewards" trains on rows like them. evaluate reads them as benchmark rows, and the
stages that sample answers to prompts (ai_feedback, grpo, rloo, ppo) pass them on as the sample's metadata,
where reward.rubric.RubricJudge looks first. Checked here, where the file and line are known, so a bad item
stops the stage at once instead of leaving every sample of that prompt unscored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlmed.data.formats import ROLES
from rlmed.data.records import Record

__all__ = ["row_messages", "row_rubric_metadata", "row_rubrics"]


def row_rubrics(record: Record) -> list[dict[str, Any]] | None:
    """The row's `rubrics` as plain {criterion, points, tags} items, or None when it has none."""
    rubrics = record.row.get("rubrics")
    if rubrics is None:
        return None
    if not isinstance(rubrics, list) or not rubrics:
        raise record.error("'rubrics' should be a non-empty list of {criterion, points, tags}")
    for i, r in enumerate(rubrics):
        points = r.get("points") if isinstance(r, dict) else None
        if (not isinstance(r, dict) or not isinstance(r.get("criterion"), str) or not r["criterion"].strip()
                or isinstance(points, bool) or not isinstance(points, (int, float))
                or not all(isinstance(t, str) for t in r.get("tags") or [])):
            raise record.error(f"rubrics[{i}] should be {{criterion: text, points: number, tags: [text]}}")
    if not any(r["points"] > 0 for r in rubrics):
        raise record.error("no rubric item has positive points, so the example's score (points met / positive "
                           "points) is undefined")
    return [{"criterion": r["criterion"], "points": r["points"], "tags": list(r.get("tags") or [])} for r in rubrics]


def row_rubric_metadata(record: Record) -> dict[str, Any]:
    """What a reward source reads from the row: {"rubrics", "prompt_id"} when it has a rubric, else {}. The id
    is the row's `prompt_id`, else its file and line, so two rows with one text keep their own rubrics."""
    rubrics = row_rubrics(record)
    if rubrics is None:
        return {}
    prompt_id = record.row.get("prompt_id")
    return {"rubrics": rubrics, "prompt_id": str(prompt_id or f"{Path(record.path).name}:{record.line}")}


def row_messages(record: Record, value: Any, field: str) -> list[dict[str, str]]:
    """A conversation given as a list of {role, content} messages (HealthBench's `prompt`), ending with the
    user's turn the model answers."""
    if not isinstance(value, list) or not value:
        raise record.error(f"'{field}' should be a non-empty list of {{role, content}} messages")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise record.error(f"{field}[{i}] should be {{role: system|user|assistant, content: text}}")
    if value[-1]["role"] != "user":
        raise record.error("the conversation should end with a user message (the model answers it)")
    return [{"role": m["role"], "content": m["content"]} for m in value]
