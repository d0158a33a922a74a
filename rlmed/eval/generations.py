"""The evaluate stage's saved generations: the row format, reading it back, and the metrics computed from it.

`generations/<model>.jsonl` holds one row per eval row the model answered, in eval-set then row order:

    {"set", "index", "kind", "prompt", "answer", "reference"}   every row ("answer" is the model's text)
    + "options", "answer_key"                                    choice rows ("answer_key": the correct letter)
    + "items"                                                    hit-rate rows (the expected items)
    + "reward", "reward_rationale", "reward_error"               generation rows, with a `reward:` source
                                                                 (rationale / error only when the source gave one)

A row carries everything its metric needs, so the stage and `rlmed report --recompute` compute the metrics
with the same function (`model_metrics`) from the same rows: what the stage reported is what the saved answers
give, and an edited answer (or a fixed metric) can be re-scored without regenerating.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

GENERATIONS = "generations"
KINDS = ("generation", "choice", "hitrate")
# What each kind needs beyond the common fields, with the JSON types accepted (None: null allowed).
KIND_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "generation": {"reference": (str, type(None))},
    "choice": {"options": (list,), "answer_key": (str,)},
    "hitrate": {"items": (list,)},
}


class GenerationsError(ValueError):
    """A generations file cannot be used; the message is `file[:line]: what is wrong; what to do`."""


def saved_row(set_name: str, index: int, kind: str, messages: list[dict[str, str]], answer: str, *,
              reference: str | None = None, options: list[str] | None = None, answer_key: str | None = None,
              items: list[Any] | None = None) -> dict[str, Any]:
    """One row of generations/<model>.jsonl, with the fields its kind is scored on."""
    row: dict[str, Any] = {"set": set_name, "index": index, "kind": kind, "prompt": messages, "answer": answer,
                           "reference": reference}
    if kind == "choice":
        row.update(options=options, answer_key=answer_key)
    elif kind == "hitrate":
        row["items"] = items
    return row


def add_reward_scores(source: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with the reward source's score on every generation row (`reward`: None when it could not be
    scored, the reason in `reward_error`) and its rationale, if any. Choice and hit-rate rows have their own
    exact metric, so they are not sent to the source (a judge call costs money)."""
    from reward.base import Sample, score_sync

    targets = [n for n, r in enumerate(rows) if r["kind"] == "generation"]
    samples = [Sample(prompt=rows[n]["prompt"], completion=rows[n]["answer"], reference=rows[n]["reference"])
               for n in targets]
    scores = score_sync(source, samples) if samples else []
    if len(scores) != len(samples):
        raise RuntimeError(f"reward source {source!r} returned {len(scores)} scores for {len(samples)} samples")
    out = [dict(r) for r in rows]
    for n, score in zip(targets, scores):
        out[n]["reward"] = score.value
        if score.rationale:
            out[n]["reward_rationale"] = score.rationale
        if score.error:
            out[n]["reward_error"] = score.error
    return out


# --- reading back ---------------------------------------------------------------------------------------------
def _rerun_hint(path: Path) -> str:
    stage = path.parent.parent.name if path.parent.name == GENERATIONS else "the evaluate stage"
    return f"re-run the evaluate stage to write it again (rlmed run <recipe> --only {stage})"


def check_row(row: Any, where: str, hint: str) -> None:
    """GenerationsError naming `where` unless `row` has the common fields and those of its kind."""
    if not isinstance(row, dict):
        raise GenerationsError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if "kind" not in row:
        raise GenerationsError(f"{where}: the row has no 'kind' (and so no options/answer_key/items to score "
                               f"against); it was written by an older rlmed. To recompute its metrics, {hint}")
    if row["kind"] not in KINDS:
        raise GenerationsError(f"{where}: 'kind' is {row['kind']!r}; expected one of {', '.join(KINDS)}")
    index = row.get("index")
    checks = [("set", isinstance(row.get("set"), str) and row.get("set"), "a non-empty string"),
              ("index", isinstance(index, int) and not isinstance(index, bool) and index >= 0,
               "a row number (integer >= 0)"),
              ("answer", isinstance(row.get("answer"), str), "the model's answer as a string")]
    for key, types in KIND_FIELDS[row["kind"]].items():
        checks.append((key, key in row and isinstance(row[key], types),
                       " or ".join("null" if t is type(None) else {str: "a string", list: "a list"}[t]
                                   for t in types)))
    for key, ok, expected in checks:
        if not ok:
            shown = "missing" if key not in row else f"{type(row[key]).__name__} {row[key]!r}"[:80]
            raise GenerationsError(f"{where}: '{key}' should be {expected} for a {row['kind']} row, got {shown}; "
                                   f"fix the row or {hint}")


def read_generations(path: Path) -> list[dict[str, Any]]:
    """The rows of one generations file, each checked (GenerationsError naming file:line and what to do)."""
    path = Path(path)
    hint = _rerun_hint(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GenerationsError(f"{path}: no such file; the evaluate stage saves every model's answers there. "
                               f"To recompute, {hint}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GenerationsError(f"{path}: cannot read it ({exc})") from exc
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise GenerationsError(f"{path}:{number}: not valid JSON ({exc}); fix the line or {hint}") from None
        check_row(row, f"{path}:{number}", hint)
        rows.append(row)
    if not rows:
        raise GenerationsError(f"{path}: has no rows; {hint}")
    return rows


def set_kinds(rows: Sequence[dict[str, Any]], where: str) -> dict[str, str]:
    """{eval set: kind} in first-seen order; GenerationsError when one set's rows disagree on their kind."""
    kinds: dict[str, str] = {}
    for row in rows:
        seen = kinds.setdefault(row["set"], row["kind"])
        if seen != row["kind"]:
            raise GenerationsError(f"{where}: eval set '{row['set']}' has rows of kind {seen} and {row['kind']} "
                                   f"(row index {row['index']}); one set has one kind")
    return kinds


# --- metrics --------------------------------------------------------------------------------------------------
def set_metrics(kind: str, rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """One eval set's metrics from its saved rows: accuracy (choice), hit rates 1-3 (hitrate), else BLEU/GLEU/
    ROUGE/Distinct against the reference; all ×100."""
    from rlmed.eval.choice import accuracy
    from rlmed.eval.hitrate import hit_rates
    from rlmed.eval.text_metrics import text_metrics

    answers = [r["answer"] for r in rows]
    if kind == "choice":
        result = accuracy(answers, [r["options"] for r in rows], [r["answer_key"] for r in rows])
        return {"accuracy": result["accuracy"], "answered": result["answered"]}
    if kind == "hitrate":
        return hit_rates(answers, [r["items"] for r in rows])
    return text_metrics([r["reference"] or "" for r in rows], answers)


def model_metrics(rows: Sequence[dict[str, Any]], kinds: dict[str, str], where: str = "generations"
                  ) -> dict[str, float]:
    """{"<set>/<metric>": value} of one model over every set of `kinds` (in that order) that has rows.
    A metric function's ValueError (e.g. a gold letter that is not an option) becomes a GenerationsError
    naming `where` and the set."""
    out: dict[str, float] = {}
    for name, kind in kinds.items():
        group = [r for r in rows if r["set"] == name]
        if not group:
            continue
        try:
            values = set_metrics(kind, group)
        except ValueError as exc:
            raise GenerationsError(f"{where}: eval set '{name}' ({kind}) cannot be scored: {exc}") from exc
        out.update({f"{name}/{key}": value for key, value in values.items()})
    return out


def reward_means(rows: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """{"<set>/reward_mean": mean of the scored rows} per set whose rows carry a reward (None: none scored)."""
    per_set: dict[str, list[float]] = {}
    for row in rows:
        if "reward" not in row:
            continue
        values = per_set.setdefault(row["set"], [])
        value = row["reward"]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            values.append(float(value))
    return {f"{name}/reward_mean": sum(v) / len(v) if v else None for name, v in per_set.items()}


def answers_by_set(rows: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """{eval set: the model's answers in row order} (rows are saved in row order)."""
    out: dict[str, list[str]] = {}
    for row in rows:
        out.setdefault(row["set"], []).append(row["answer"])
    return out
