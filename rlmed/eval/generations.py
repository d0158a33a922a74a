"""The evaluate stage's saved generations: the row format, reading it back, and the metrics computed from it.

`generations/<model>.jsonl` holds one row per eval row the model answered, in eval-set then row order:

    {"set", "index", "kind", "prompt", "answer", "reference"}   every row ("answer" is the model's text)
    + "options", "answer_key"                                    choice rows ("answer_key": the correct letter;
                                                                 the sorted correct letters when "multiple": true)
    + "items"                                                    hit-rate rows (the expected items)
    + "reward", "reward_parts", "reward_rationale", "reward_error"
                                                                 generation rows, with a `reward:` source (parts,
                                                                 rationale, error only when the source gave them)
    + "tags"                                                     the eval row's fields named by the stage's
                                                                 breakdown_by (e.g. {"condition": "发热"}), if any
                                                                 (HealthBench rows: also their "example_tags")
    + "metadata"                                                 what the reward source reads besides the answer
                                                                 (HealthBench: "rubrics", "prompt_id"), if any

A row carries everything its metric needs, so the stage and `rlmed report --recompute` compute the metrics
with the same function (`model_metrics`) from the same rows: what the stage reported is what the saved answers
give, and an edited answer (or a fixed metric) can be re-scored without regenerating. `model_values` keeps the
per-row values those metrics average (and the answers' tokens for the corpus-level Distinct), which the paired
bootstrap (rlmed.eval.comparisons) resamples.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

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


REWARD_MEAN = "reward_mean"
PART_PREFIX = "reward."  # a reward part's metric is "reward.<part>", e.g. "reward.rules.referral"
TAG_PART = "tag:"  # a rubric judge's per-tag part ("tag:axis:accuracy"), the only parts of a rubric row averaged


def saved_row(set_name: str, index: int, kind: str, messages: list[dict[str, str]], answer: str, *,
              reference: str | None = None, options: list[str] | None = None, answer_key: str | None = None,
              items: list[Any] | None = None, tags: dict[str, Any] | None = None,
              samples: list[str] | None = None, multiple: bool = False,
              metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """One row of generations/<model>.jsonl, with the fields its kind is scored on (and its tags, if any).
    `samples`: every answer of a generation row answered several times (`answer` is the first); `multiple`: a
    multiple-answer choice row (scored by exact set match); `metadata`: given to the reward source."""
    row: dict[str, Any] = {"set": set_name, "index": index, "kind": kind, "prompt": messages, "answer": answer,
                           "reference": reference}
    if samples is not None and len(samples) > 1:
        row["samples"] = list(samples)
    if kind == "choice":
        row.update(options=options, answer_key=answer_key)
        if multiple:
            row["multiple"] = True
    elif kind == "hitrate":
        row["items"] = items
    if tags:
        row["tags"] = dict(tags)
    if metadata:
        row["metadata"] = dict(metadata)
    return row


def row_tags(row: dict[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    """The eval row's values of `fields` (those it has, null left out), for per-row breakdowns."""
    return {f: row[f] for f in fields if row.get(f) is not None}


def tag_key(value: Any) -> str:
    """A tag value as a results.json key: strings as they are, anything else as JSON (true, 3, ["a"])."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)


def answers_of(row: dict[str, Any]) -> list[str]:
    """Every answer of a row: its samples when it was answered several times, else its one answer."""
    return list(row.get("samples") or [row["answer"]])


def add_reward_scores(source: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with the reward source's score on every generation row (`reward`: None when it could not be
    scored, the reason in `reward_error`) and its rationale, if any. A row answered several times gets the mean
    over its scored samples (`sample_rewards`: each sample's score), and each part's mean. Choice and hit-rate
    rows have their own exact metric, so they are not sent to the source (a judge call costs money). A row's
    `metadata` (HealthBench's rubrics and prompt_id) goes to the source with each of its samples; of a
    rubric-graded row's parts only the "tag:<name>" ones are averaged like other parts (one per tag: HealthBench's
    axes and themes), and the per-criterion ones are kept in the row as `reward_criteria` (tens of thousands of
    distinct criteria would otherwise each become a metric)."""
    from reward.base import Sample, score_sync

    targets = [n for n, r in enumerate(rows) if r["kind"] == "generation"]
    samples = [Sample(prompt=rows[n]["prompt"], completion=answer, reference=rows[n]["reference"],
                      group=f"{rows[n]['set']}:{rows[n]['index']}", metadata=dict(rows[n].get("metadata") or {}))
               for n in targets for answer in answers_of(rows[n])]
    scores = score_sync(source, samples) if samples else []
    if len(scores) != len(samples):
        raise RuntimeError(f"reward source {source!r} returned {len(scores)} scores for {len(samples)} samples")
    out = [dict(r) for r in rows]
    position = 0
    for n in targets:
        mine = scores[position:position + len(answers_of(rows[n]))]
        position += len(mine)
        scored = [s for s in mine if s.value is not None]
        out[n]["reward"] = sum(s.value for s in scored) / len(scored) if scored else None  # type: ignore[misc]
        if len(mine) > 1:
            out[n]["sample_rewards"] = [s.value for s in mine]
        # Parts (e.g. a Composite's "rules.referral") are averaged, broken down and compared like any metric;
        # a user source's non-numeric part has no mean, so it is not kept.
        names = dict.fromkeys(k for s in scored for k, v in s.parts.items() if isinstance(v, (int, float)))
        parts = {k: sum(float(s.parts[k]) for s in scored if k in s.parts) / sum(k in s.parts for s in scored)
                 for k in names}
        if (rows[n].get("metadata") or {}).get("rubrics") is not None:
            criteria = {k: v for k, v in parts.items() if not k.startswith(TAG_PART)}
            parts = {k: v for k, v in parts.items() if k.startswith(TAG_PART)}
            if criteria:
                out[n]["reward_criteria"] = criteria
        if parts:
            out[n]["reward_parts"] = parts
        rationales = [s.rationale for s in mine if s.rationale]
        if rationales:
            out[n]["reward_rationale"] = rationales[0] if len(mine) == 1 else rationales
        errors = [s.error for s in mine if s.error]
        if errors:
            out[n]["reward_error"] = errors[0] if len(mine) == 1 else errors
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
    for key in ("tags", "reward_parts", "metadata"):
        checks.append((key, isinstance(row.get(key, {}), dict), "an object (or absent)"))
    checks.append(("multiple", isinstance(row.get("multiple", False), bool), "true or false (or absent)"))
    samples = row.get("samples", [""])
    checks.append(("samples", isinstance(samples, list) and samples and all(isinstance(a, str) for a in samples),
                   "a non-empty list of answer strings (or absent)"))
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


# --- metrics ----------------------------------------------------------------------------------------------------
@dataclass
class SetValues:
    """One model's values on one eval set, rows in index order: per-row metric values (their means are the
    reported metrics; NaN where a row has none, e.g. an unscored reward), the answers' tokens for the
    corpus-level Distinct-1/2 (generation sets), and each row's tags."""

    kind: str
    index: list[int]
    rows: dict[str, np.ndarray]
    tokens: list[list[str]] | None = None
    tags: list[dict[str, Any]] = field(default_factory=list)

    def subset(self, positions: Sequence[int]) -> "SetValues":
        """The same values restricted to the rows at `positions` (a breakdown group)."""
        pick = np.asarray(positions, dtype=np.int64)
        return SetValues(self.kind, [self.index[p] for p in positions], {k: v[pick] for k, v in self.rows.items()},
                         None if self.tokens is None else [self.tokens[p] for p in positions],
                         [self.tags[p] for p in positions])


def _number(value: Any) -> float:
    """A saved score as a float; NaN for None and anything not a finite number (never a silent 0)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return math.nan


def _reward_rows(rows: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """"reward_mean" and "reward.<part>" per row (NaN where missing), when any row carries a reward."""
    if not any("reward" in r for r in rows):
        return {}
    out = {REWARD_MEAN: np.array([_number(r.get("reward")) for r in rows])}
    parts = list(dict.fromkeys(p for r in rows for p in (r.get("reward_parts") or {})))
    for part in parts:
        out[PART_PREFIX + part] = np.array([_number((r.get("reward_parts") or {}).get(part)) for r in rows])
    return out


def set_values(kind: str, rows: Sequence[dict[str, Any]]) -> SetValues:
    """One eval set's per-row values from its saved rows (sorted by index): correct / wrong / unanswerable
    (choice, ×100: a wrong letter and no letter at all are told apart), hit criteria 1-3 (hitrate, ×100), else
    BLEU/GLEU/ROUGE against the reference (none when no row has one, as in HealthBench: a score against an empty
    reference would only say 0) and the answers' tokens; plus the reward and its parts where the rows carry
    them."""
    from rlmed.eval.choice import choice_rows
    from rlmed.eval.hitrate import HIT_RATE_KEYS, hit_rows

    rows = sorted(rows, key=lambda r: r["index"])
    answers = [r["answer"] for r in rows]
    tokens = None
    if kind == "choice":
        marks = choice_rows(answers, [r["options"] for r in rows], [r["answer_key"] for r in rows],
                            [bool(r.get("multiple")) for r in rows])
        values = {"accuracy": [100.0 * c for c, _ in marks], "wrong": [100.0 * (a and not c) for c, a in marks],
                  "unanswerable": [100.0 * (not a) for _, a in marks]}
    elif kind == "hitrate":
        met = hit_rows(answers, [r["items"] for r in rows])
        values = {key: [100.0 * m[k] for m in met] for k, key in enumerate(HIT_RATE_KEYS)}
    else:
        values, tokens = _text_values(rows)
        if all(r["reference"] is None for r in rows):
            values = {}
    arrays = {k: np.array(v, dtype=np.float64) for k, v in values.items()}
    arrays.update(_reward_rows(rows))
    return SetValues(kind, [r["index"] for r in rows], arrays, tokens, [dict(r.get("tags") or {}) for r in rows])


def _text_values(rows: Sequence[dict[str, Any]]) -> tuple[dict[str, list[float]], list[list[str]]]:
    """Per-row text metrics, each row's the mean over its answers (one, or its samples), and each row's first
    answer's tokens for Distinct-n (samples of one row joined would make n-grams across them)."""
    from rlmed.eval.text_metrics import text_metric_rows

    flat = [(r["reference"] or "", a) for r in rows for a in answers_of(r)]
    scores, tokens = text_metric_rows([ref for ref, _ in flat], [a for _, a in flat])
    values: dict[str, list[float]] = {key: [] for key in scores}
    firsts, position = [], 0
    for r in rows:
        k = len(answers_of(r))
        for key, column in scores.items():
            values[key].append(sum(column[position:position + k]) / k)
        firsts.append(tokens[position])
        position += k
    return values, firsts


def _mean(values: np.ndarray) -> float | None:
    # sum()/len left to right over Python floats: the exact numbers rlmed reported before per-row values.
    kept = [v for v in values.tolist() if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else None


def summarise(values: SetValues) -> tuple[dict[str, float], dict[str, float | None]]:
    """(metrics, reward means) of one set's values, keyed by metric: the means of the per-row values, and
    Distinct-1/2 over the answers' tokens (generation sets). Raises ValueError for a set with no rows."""
    from rlmed.eval.text_metrics import distinct

    if not values.index:
        raise ValueError("no rows to score")
    metrics: dict[str, float] = {}
    reward: dict[str, float | None] = {}
    for key, column in values.rows.items():
        if key == REWARD_MEAN:
            reward[key] = _mean(column)
        elif key.startswith(PART_PREFIX):
            if (mean := _mean(column)) is not None:
                reward[key] = mean
        else:
            metrics[key] = _mean(column)  # type: ignore[assignment]  (no NaN in exact metrics)
    if values.tokens is not None:
        metrics["distinct_1"] = distinct(values.tokens, 1)
        metrics["distinct_2"] = distinct(values.tokens, 2)
    return metrics, reward


def set_metrics(kind: str, rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """One eval set's metrics from its saved rows: accuracy (choice), hit rates 1-3 (hitrate), else BLEU/GLEU/
    ROUGE/Distinct against the reference; all ×100."""
    return summarise(set_values(kind, rows))[0]


def model_values(rows: Sequence[dict[str, Any]], kinds: dict[str, str], where: str = "generations"
                 ) -> dict[str, SetValues]:
    """{eval set: SetValues} of one model over every set of `kinds` (in that order) that has rows.
    A metric function's ValueError (e.g. a gold letter that is not an option) becomes a GenerationsError
    naming `where` and the set."""
    out: dict[str, SetValues] = {}
    for name, kind in kinds.items():
        group = [r for r in rows if r["set"] == name]
        if not group:
            continue
        try:
            out[name] = set_values(kind, group)
        except ValueError as exc:
            raise GenerationsError(f"{where}: eval set '{name}' ({kind}) cannot be scored: {exc}") from exc
    return out


def summarise_model(values: dict[str, SetValues]) -> tuple[dict[str, float], dict[str, float | None]]:
    """({"<set>/<metric>": value}, {"<set>/reward_mean" or "<set>/reward.<part>": mean}) of one model."""
    metrics: dict[str, float] = {}
    reward: dict[str, float | None] = {}
    for name, set_vals in values.items():
        m, r = summarise(set_vals)
        metrics.update({f"{name}/{k}": v for k, v in m.items()})
        reward.update({f"{name}/{k}": v for k, v in r.items()})
    return metrics, reward


def model_metrics(rows: Sequence[dict[str, Any]], kinds: dict[str, str], where: str = "generations"
                  ) -> dict[str, float]:
    """{"<set>/<metric>": value} of one model over every set of `kinds` (in that order) that has rows."""
    return summarise_model(model_values(rows, kinds, where))[0]


def reward_means(rows: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """{"<set>/reward_mean": mean of the scored rows (None: none scored), "<set>/reward.<part>": mean of each
    part over the rows that have it} per set whose rows carry a reward."""
    per_set: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        per_set.setdefault(row["set"], []).append(row)
    out: dict[str, float | None] = {}
    for name, group in per_set.items():
        for key, column in _reward_rows(group).items():
            mean = _mean(column)
            if key == REWARD_MEAN or mean is not None:
                out[f"{name}/{key}"] = mean
    return out


def answers_by_set(rows: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """{eval set: the model's answers in row order} (rows are saved in row order)."""
    out: dict[str, list[str]] = {}
    for row in rows:
        out.setdefault(row["set"], []).append(row["answer"])
    return out
