"""`rlmed judge-check`: how far an LLM judge agrees with human labels (doctors'), before it is trusted as a reward.

HuatuoGPT validated its GPT-4 judge against doctors; this measures the same for the judge a recipe uses.

Labels (one JSON object per line; one file holds one kind, found from the first row):
- pairwise: {"prompt": messages or text, "answer_a", "answer_b", "label": "a" | "b" | "tie",
  "reference": doctor's reply (optional), "annotator" (optional), "id" (optional), "metadata" (optional, free)}
- scores: {"prompt", "answer", "scores": {criterion: number, ..., "overall": number (optional)}, "reference",
  "annotator", "id", "metadata" (all optional)}; criteria as the judge's rubric names them, on any scale.
Every problem is reported at once, each as file:line: reason.

The judge is a `_component_` block, the same a recipe's `reward:` takes: from a YAML file of its own, or from a
recipe stage's `reward:` or `args.judge` (evaluate). Only that stage's block is read and checked, so the rest of
the recipe (its data files) need not exist here. A block holding a Composite is searched for its one judge: a
component with both `compare` and `score` (reward.judge.LLMJudge). It is built through rlmed.rl.sources, as
every stage builds it: a cache (a re-run sends nothing twice), the audit log of every request sent, and the host
policy (reward.hosts), checked before any label is sent.

Pairwise. `LLMJudge.compare` judges one order, so each distinct pair is asked twice, (A, B) then (B, A), through
rlmed.eval.pairwise.compare_models, and the judge's verdict is the evaluate stage's: "a" or "b" when both orders
pick that answer, "tie" otherwise (both tie, or the verdict followed the position, or one order tied). Against
the human labels: accuracy over {a, b, tie} (a human tie agrees only with a judge tie), accuracy without ties
(rows where neither said tie, MT-Bench's "agreement w/o tie"), Cohen's kappa over {a, b, tie}, each with a 95%
percentile bootstrap interval over pairs (rows labelling the same pair are drawn together); per distinct pair:
position bias (the same slot won in both orders), consistency (the same answer won, or both tied), the share of
single verdicts that picked the first slot. A pair either of whose requests failed is unscored: left out of
every number and listed with its error, never counted as agreement or disagreement.

Scores. Each answer is scored by `judge.score` (pointwise; a listwise judge ranks the answers to one prompt
together, as in ai_feedback). Per criterion: Spearman's rho (average ranks for ties) between the judge's score
and the human one, with n; quadratic-weighted kappa on the judge's 1..10 scale (its 0..1 parts × 9 + 1, rounded)
when every human score of the criterion is a whole number in 1..10. "overall": the judge's overall value against
the row's human "overall", or, without one, the mean of the row's scores when it scores every rubric criterion.

Output: judge_check.json (every number, the definitions, per-row verdicts and errors, the judge's request
counts) and judge_check.md in the output folder, written 0600 (rationales may quote the dialogue).
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import inspect
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from rlmed.components import KEY, ComponentError, check_component, import_object, is_component
from rlmed.data.formats import check_order, describe_keys, optional_string, require_string
from rlmed.data.records import DataError, Record, scan_records, type_name
from rlmed.data.turns import parse_turns
from rlmed.eval.agreement import (PAIR_LABELS, accuracy, bootstrap_agreement, cohen_kappa, position_bias, spearman,
                                  weighted_kappa)
from rlmed.eval.bootstrap import CONFIDENCE, RESAMPLES, wilson

PAIRWISE, SCORES = "pairwise", "scores"
PAIR_KEYS = ("prompt", "answer_a", "answer_b", "label", "reference", "annotator", "id", "metadata")
SCORE_KEYS = ("prompt", "answer", "scores", "reference", "annotator", "id", "metadata")
OVERALL = "overall"
COMPOSITE_ENTRY_KEYS = ("weight", "name")  # reward.composite.Composite reads these off each source entry
SCALE = tuple(range(1, 11))  # the judge's score scale (reward.prompts SCORE_MIN..SCORE_MAX), for weighted kappa
JSON_NAME, MD_NAME = "judge_check.json", "judge_check.md"
MAX_LISTED = 50  # rows listed in judge_check.md per section; the json has them all

DEFINITIONS = {
    "judge_verdict": "each pair asked in both orders; 'a'/'b' when both orders pick that answer, else 'tie' "
                     "(the evaluate stage's rule: a verdict that follows the position is no preference)",
    "accuracy": "share of scored label rows whose judge verdict equals the human label among a/b/tie; a human "
                "tie agrees only with a judge tie",
    "accuracy_without_ties": "the same over rows where neither the human nor the judge said tie",
    "kappa": "Cohen's kappa over {a, b, tie}, human rows x judge columns",
    "intervals": "95% percentile bootstrap over distinct pairs (rows labelling one pair drawn together)",
    "position_bias": "share of distinct scored pairs where the same slot (first or second shown) won in both "
                     "orders; Wilson 95% interval",
    "consistency": "share of distinct scored pairs where the same answer won in both orders, or both tied",
    "first_position_rate": "share of decisive single verdicts that picked the answer shown first (0.5 unbiased)",
    "unscored": "label rows (pairs) where a judge request failed after its retries: left out of every number",
    "spearman": "Spearman's rho, average ranks for ties, judge score vs human score over rows both scored",
    "weighted_kappa": "quadratic-weighted kappa on 1..10 (judge 0..1 parts x 9 + 1, rounded), only when every "
                      "human score of the criterion is a whole number in 1..10",
    "overall": "judge's overall value vs the human 'overall' score, or the mean of the human criterion scores "
               "when a row scores every rubric criterion",
}
PAIRWISE_TERMS = ("judge_verdict", "accuracy", "accuracy_without_ties", "kappa", "intervals", "position_bias",
                  "consistency", "first_position_rate", "unscored")
SCORE_TERMS = ("spearman", "weighted_kappa", "overall", "unscored")


class JudgeCheckError(ValueError):
    """Bad input (exit 2): every problem found, each naming its file and, for a label, its line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


# ----------------------------------------------------------------------------------------------- the labels


@dataclass(frozen=True)
class PairLabel:
    line: int
    prompt: list[dict[str, str]]
    answer_a: str
    answer_b: str
    label: str
    reference: str | None = None
    annotator: str | None = None
    id: str | None = None


@dataclass(frozen=True)
class ScoreLabel:
    line: int
    prompt: list[dict[str, str]]
    answer: str
    scores: dict[str, float] = field(default_factory=dict)
    reference: str | None = None
    annotator: str | None = None
    id: str | None = None


def _kind_of(record: Record) -> str:
    pair = [k for k in ("answer_a", "answer_b", "label") if k in record.row]
    score = [k for k in ("answer", "scores") if k in record.row]
    if pair and score:
        raise record.error(f"mixes pairwise fields ({', '.join(pair)}) and score fields ({', '.join(score)})")
    if not pair and not score:
        raise record.error(f"neither a pairwise label (prompt, answer_a, answer_b, label) nor a score label "
                           f"(prompt, answer, scores); found keys {describe_keys(record.row)}")
    return PAIRWISE if pair else SCORES


def _check_keys(record: Record, accepted: Sequence[str], kind: str) -> None:
    for key in record.row:
        if key not in accepted:
            close = difflib.get_close_matches(str(key), accepted, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            # Strict on purpose: a misspelt "reference" would silently change what the judge is shown.
            raise record.error(f"unknown field '{key}' in a {kind} label{hint}; accepted: {', '.join(accepted)}")
    for key in accepted:
        if key not in ("reference", "annotator", "id", "metadata") and key not in record.row:
            raise record.error(f"missing field '{key}' ({kind} label)")


def _prompt(record: Record) -> list[dict[str, str]]:
    value = record.row["prompt"]
    if isinstance(value, str):
        return [{"role": "user", "content": require_string(record, value, "field 'prompt'")}]
    if isinstance(value, list):
        if not value:
            raise record.error("field 'prompt' has no messages")
        messages, labels = parse_turns(record, value, "prompt")
        check_order(record, messages, labels, require_final_assistant=False)
        return messages
    raise record.error(f"field 'prompt' must be a text or a list of messages, got {type_name(value)}")


def _name(record: Record, key: str) -> str | None:
    value = record.row.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise record.error(f"field '{key}' must be a string, got {type_name(value)}")
    return str(value)


def _pair_label(record: Record) -> PairLabel:
    _check_keys(record, PAIR_KEYS, PAIRWISE)
    label = record.row["label"]
    if not isinstance(label, str) or label.strip().lower() not in PAIR_LABELS:
        raise record.error(f"field 'label' must be 'a', 'b' or 'tie', got {label!r}")
    return PairLabel(line=record.line, prompt=_prompt(record),
                     answer_a=require_string(record, record.row["answer_a"], "field 'answer_a'"),
                     answer_b=require_string(record, record.row["answer_b"], "field 'answer_b'"),
                     label=label.strip().lower(), reference=optional_string(record, "reference") or None,
                     annotator=_name(record, "annotator"), id=_name(record, "id"))


def _number(record: Record, value: Any, label: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise record.error(f"{label} must be a number, got {value!r}")
    return float(value)


def _score_label(record: Record) -> ScoreLabel:
    _check_keys(record, SCORE_KEYS, SCORES)
    scores = record.row["scores"]
    if not isinstance(scores, dict) or not scores:
        raise record.error(f"field 'scores' must be a non-empty object {{criterion: number}}, got "
                           f"{type_name(scores) if scores else 'an empty one'}")
    return ScoreLabel(line=record.line, prompt=_prompt(record),
                      answer=require_string(record, record.row["answer"], "field 'answer'"),
                      scores={str(k): _number(record, v, f"scores.{k}") for k, v in scores.items()},
                      reference=optional_string(record, "reference") or None,
                      annotator=_name(record, "annotator"), id=_name(record, "id"))


def read_labels(path: str | Path) -> tuple[str, list[PairLabel] | list[ScoreLabel]]:
    """(kind, rows) of a label file; JudgeCheckError listing every bad row (file:line: reason)."""
    try:
        records = scan_records(path)
    except DataError as exc:
        raise JudgeCheckError([str(exc)]) from None
    problems: list[str] = []
    kind, first_line = None, None
    rows: list[Any] = []
    for record in records:
        if isinstance(record, DataError):
            problems.append(str(record))
            continue
        try:
            row_kind = _kind_of(record)
            if kind is None:
                kind, first_line = row_kind, record.line
            elif row_kind != kind:
                raise record.error(f"a {row_kind} label in a file of {kind} labels (line {first_line} is one); "
                                   f"one file holds one kind")
            rows.append(_pair_label(record) if row_kind == PAIRWISE else _score_label(record))
        except DataError as exc:
            problems.append(str(exc))
    if problems:
        raise JudgeCheckError(problems)
    assert kind is not None  # scan_records refuses a file without rows
    return kind, rows


def check_criteria(path: str | Path, rows: Sequence[ScoreLabel], criteria: Sequence[str] | None) -> None:
    """Every score label names only the judge's criteria (or "overall"); JudgeCheckError otherwise."""
    if criteria is None:  # a judge without a rubric: its parts are matched by name, whatever they are
        return
    allowed = [*criteria, OVERALL]
    problems = []
    for row in rows:
        unknown = [name for name in row.scores if name not in allowed]
        if unknown:
            close = difflib.get_close_matches(unknown[0], allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(f"{path}:{row.line}: scores name {', '.join(repr(u) for u in unknown)}, not a criterion "
                            f"of the judge's rubric{hint}; criteria: {', '.join(allowed)}")
    if problems:
        raise JudgeCheckError(problems)


# ----------------------------------------------------------------------------------------------- the judge


def _is_judge(target: Any) -> bool:
    return callable(getattr(target, "compare", None)) and callable(getattr(target, "score", None))


def _judges(spec: Any, where: str) -> list[tuple[str, dict[str, Any]]]:
    """(where, spec) of every judge component inside a block; a judge's own arguments are not searched."""
    if isinstance(spec, list):
        return [found for i, item in enumerate(spec) for found in _judges(item, f"{where}[{i}]")]
    if not isinstance(spec, dict):
        return []
    if is_component(spec):
        try:
            if _is_judge(import_object(spec[KEY])):
                return [(where, spec)]
        except ComponentError:
            pass  # check_component reports it
    return [found for key, value in spec.items() if key != KEY for found in _judges(value, f"{where}.{key}")]


def select_judge(block: Any, where: str) -> dict[str, Any]:
    """The one judge component of a `reward:`-style block, checked against its signature; JudgeCheckError naming
    `where` otherwise."""
    if not is_component(block):
        raise JudgeCheckError([f"{where}: expected a mapping with _component_: reward.judge.LLMJudge and its "
                               f"arguments (what a recipe's reward: block takes), got {type_name(block)}"])
    problems = check_component(block)
    if problems:
        raise JudgeCheckError([f"{where}: {p}" for p in problems])
    judges = _judges(block, where)
    if len(judges) != 1:
        found = ", ".join(w for w, _ in judges)
        raise JudgeCheckError([f"{where}: holds {len(judges)} LLM judges{f' ({found})' if found else ''}; "
                               f"judge-check needs exactly one (a component with compare and score, such as "
                               f"reward.judge.LLMJudge): write it in a --judge file"])
    inner, spec = judges[0]
    if spec is not block:
        # An entry of a Composite's sources carries the Composite's own keys (weight, name) beside the judge's.
        params = inspect.signature(import_object(spec[KEY])).parameters
        spec = {k: v for k, v in spec.items() if k not in COMPOSITE_ENTRY_KEYS or k in params}
        problems = check_component(spec)
        if problems:
            raise JudgeCheckError([f"{inner}: {p}" for p in problems])
    return spec


def _read_yaml(path: Path, what: str) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except (FileNotFoundError, IsADirectoryError):
        raise JudgeCheckError([f"{path}: {what} file not found"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise JudgeCheckError([f"{path}{f':{mark.line + 1}' if mark else ''}: invalid YAML: "
                               f"{getattr(exc, 'problem', exc)}"]) from None


def judge_from_file(path: Path) -> dict[str, Any]:
    """The judge spec of a YAML file holding one `_component_` block."""
    return select_judge(_read_yaml(path, "judge"), str(path))


def judge_from_recipe(path: Path, stage_id: str, kind: str) -> tuple[dict[str, Any], Path, str]:
    """(judge spec, the recipe's run_dir, where) from one stage of a recipe. Its `reward:` block and `args.judge`
    (evaluate's pairwise judge) are looked in, the one the label kind uses first: args.judge for pairwise labels,
    reward: for scores."""
    raw = _read_yaml(path, "recipe")
    stages = raw.get("stages") if isinstance(raw, dict) else None
    if not isinstance(stages, list):
        raise JudgeCheckError([f"{path}: not a recipe (no stages: list)"])
    blocks = {}
    for stage in stages:
        if isinstance(stage, dict) and isinstance(stage.get("id"), str):
            args = stage.get("args") if isinstance(stage.get("args"), dict) else {}
            blocks[stage["id"]] = [(f"{path}: stage '{stage['id']}': reward", stage.get("reward")),
                                   (f"{path}: stage '{stage['id']}': args.judge", args.get("judge"))]
    with_judge = [sid for sid, found in blocks.items() if any(_judges(b, w) for w, b in found)]
    if stage_id not in blocks:
        raise JudgeCheckError([f"{path}: no stage '{stage_id}'; stages with an LLM judge: "
                               f"{', '.join(with_judge) or 'none'}"])
    found = blocks[stage_id] if kind == SCORES else blocks[stage_id][::-1]
    for where, block in found:
        if block is not None and _judges(block, where):
            name = raw.get("name") if isinstance(raw.get("name"), str) else path.stem
            run_dir = raw.get("run_dir") if isinstance(raw.get("run_dir"), str) else f"runs/{name}"
            return select_judge(block, where), Path(run_dir), where
    raise JudgeCheckError([f"{path}: stage '{stage_id}' has no LLM judge in reward: or args.judge; stages with "
                           f"one: {', '.join(with_judge) or 'none'}"])


def build_judge(spec: dict[str, Any], cache_root: Path, where: str) -> Any:
    """The judge, built as a stage builds it (rlmed.rl.sources): cache in cache_root/judge_cache, audit log in
    cache_root/audit/judge_check.rank0.jsonl. Its client is made here, so the host policy refuses an endpoint
    (JudgeCheckError) before any label is read out to it."""
    from rlmed.rl.sources import build_reward_source

    try:
        judge = build_reward_source(spec, cache_root, cache_root / "judge_check")
        getattr(judge, "client", None)
    except (TypeError, ValueError) as exc:  # bad arguments, an unreadable rubric, HostNotAllowed
        raise JudgeCheckError([f"{where}: {exc}"]) from None
    return judge


def describe_judge(judge: Any, spec: dict[str, Any], where: str) -> dict[str, Any]:
    from reward.urls import public_url

    rubric = getattr(judge, "rubric", None)
    return {"source": where, "component": spec[KEY], "model": getattr(judge, "model", None),
            "endpoint": public_url(getattr(judge, "base_url", None)), "mode": getattr(judge, "mode", None),
            "rubric": getattr(rubric, "name", None),
            "criteria": list(rubric.criteria) if rubric is not None else None}


# ----------------------------------------------------------------------------------------------- judging


async def _judged(judge: Any, work: Any) -> Any:
    try:
        return await work
    finally:  # flush the cache and close connections even when judging raised
        close = getattr(judge, "aclose", None)
        if close is not None:
            await close()


def _pair_key(label: PairLabel) -> str:
    return json.dumps([label.prompt, label.answer_a, label.answer_b, label.reference], ensure_ascii=False)


def _interval(value: float | None, bounds: tuple[float | None, float | None], n: int) -> dict[str, Any]:
    return {"value": value, "low": bounds[0], "high": bounds[1], "n": n}


def _agreement(human: list[str], judged: list[str]) -> dict[str, Any]:
    return {"n": len(human), "accuracy": accuracy(judged, human), "kappa": cohen_kappa(human, judged, PAIR_LABELS)}


def check_pairwise(judge: Any, labels: Sequence[PairLabel], seed: int, resamples: int = RESAMPLES
                   ) -> dict[str, Any]:
    """Ask the judge about every distinct pair in both orders; agreement with the labels (module docstring)."""
    from rlmed.eval.pairwise import PairRow, compare_models

    index: dict[str, int] = {}
    pairs: list[PairRow] = []
    pair_of: list[int] = []
    for label in labels:  # a pair several annotators labelled is asked once
        key = _pair_key(label)
        if key not in index:
            index[key] = len(pairs)
            pairs.append(PairRow(label.prompt, label.answer_a, label.answer_b, label.reference, id=str(label.line)))
        pair_of.append(index[key])
    result = asyncio.run(_judged(judge, compare_models(judge, pairs, model="answer_a", baseline="answer_b")))
    verdict_of = {"win": "a", "loss": "b", "tie": "tie", "failed": None}
    verdicts = [verdict_of[row.outcome] for row in result.rows]

    scored = [i for i, label in enumerate(labels) if verdicts[pair_of[i]] is not None]
    human = [labels[i].label for i in scored]
    judged: list[str] = [verdicts[pair_of[i]] for i in scored]  # type: ignore[misc]  # scored: not None
    decisive = [(h, j) for h, j in zip(human, judged) if "tie" not in (h, j)]
    bounds = bootstrap_agreement(human, judged, [pair_of[i] for i in scored], PAIR_LABELS, seed,
                                 ("judge_check", PAIRWISE), resamples)
    bias = position_bias([row.verdicts[0] for row in result.rows], [row.verdicts[1] for row in result.rows])
    low, high = wilson(bias.first + bias.second, bias.n) if bias.n else (None, None)
    picks = [v for row in result.rows if row.outcome != "failed" for v in row.verdicts if v in ("a", "b")]
    annotators = sorted({labels[i].annotator or "" for i in range(len(labels))})
    by_annotator = {}
    if annotators != [""]:
        for name in annotators:
            mine = [k for k, i in enumerate(scored) if (labels[i].annotator or "") == name]
            by_annotator[name or "(none)"] = _agreement([human[k] for k in mine], [judged[k] for k in mine])
    rows = []
    for i, label in enumerate(labels):
        outcome = result.rows[pair_of[i]]
        rows.append({"line": label.line, "id": label.id, "annotator": label.annotator, "human": label.label,
                     "judge": verdicts[pair_of[i]], "verdicts": list(outcome.verdicts),
                     "errors": list(outcome.errors), "rationales": list(outcome.rationales)})
    return {
        "label_rows": len(labels), "pairs": len(pairs), "scored_rows": len(scored),
        "unscored_rows": len(labels) - len(scored), "unscored_pairs": result.failed,
        "accuracy": _interval(accuracy(judged, human), bounds["accuracy"], len(scored)),
        "accuracy_without_ties": {"value": accuracy([j for _, j in decisive], [h for h, _ in decisive]),
                                  "n": len(decisive)},
        "kappa": _interval(cohen_kappa(human, judged, PAIR_LABELS), bounds["kappa"], len(scored)),
        "confusion": {"rows": "human", "columns": "judge", "labels": list(PAIR_LABELS),
                      "counts": [[sum(1 for h, j in zip(human, judged) if (h, j) == (r, c)) for c in PAIR_LABELS]
                                 for r in PAIR_LABELS]},
        "position_bias": {**bias.as_dict(), "low": low, "high": high},
        "first_position_rate": sum(v == "a" for v in picks) / len(picks) if picks else None,
        "by_annotator": by_annotator,
        "usage": result.usage,
        "rows": rows,
    }


def _to_scale(unit: float) -> float:
    """A 0..1 judge value back on the judge's 1..10 scale (reward.judge maps s to (s - 1) / 9)."""
    return 1.0 + 9.0 * unit


def _series(judge_values: list[float], human_values: list[float], explicit: bool = True) -> dict[str, Any]:
    """Spearman (and weighted kappa where it applies) of one criterion's (judge 0..1, human) pairs."""
    out: dict[str, Any] = {"n": len(human_values), "spearman": spearman(judge_values, human_values),
                           "weighted_kappa": None, "kappa_note": None,
                           "human_range": [min(human_values), max(human_values)] if human_values else None,
                           "judge_mean": sum(map(_to_scale, judge_values)) / len(judge_values) if judge_values
                           else None}
    if not human_values:
        out["kappa_note"] = "no rows"
    elif not explicit:
        out["kappa_note"] = "human overall is a mean of criteria, not a score on the scale"
    elif all(float(h).is_integer() and 1 <= h <= 10 for h in human_values):
        # Half-up rounding: the judge's scores are whole numbers, floats only when a judge gave fractions.
        judged = [min(10, max(1, math.floor(_to_scale(v) + 0.5))) for v in judge_values]
        out["weighted_kappa"] = weighted_kappa([int(h) for h in human_values], judged, SCALE)
    else:
        out["kappa_note"] = "human scores are not whole numbers on the judge's 1..10 scale"
    return out


def check_scores(judge: Any, labels: Sequence[ScoreLabel], criteria: Sequence[str] | None, source: str
                 ) -> dict[str, Any]:
    """Score every labelled answer with the judge; per-criterion agreement with the human scores."""
    from reward.base import Sample

    samples = []
    for label in labels:
        # The group lets a listwise judge see the answers to one prompt together, as ai_feedback shows them.
        group = hashlib.sha256(json.dumps([label.prompt, label.reference], ensure_ascii=False).encode()).hexdigest()
        samples.append(Sample(prompt=label.prompt, completion=label.answer, reference=label.reference,
                              group=group[:16], metadata={"id": label.id or f"{source}:{label.line}"}))
    scores = asyncio.run(_judged(judge, judge.score(samples)))
    names = list(criteria) if criteria is not None else sorted({n for label in labels for n in label.scores} -
                                                               {OVERALL})
    per: dict[str, dict[str, Any]] = {}
    for name in names:
        pairs = [(s.parts[name], label.scores[name]) for label, s in zip(labels, scores)
                 if s.value is not None and name in label.scores and name in s.parts]
        if any(name in label.scores for label in labels):
            per[name] = _series([j for j, _ in pairs], [h for _, h in pairs])
    overall_pairs, explicit = [], True
    for label, score in zip(labels, scores):
        if score.value is None:
            continue
        if OVERALL in label.scores:
            overall_pairs.append((score.value, label.scores[OVERALL]))
        elif criteria is not None and all(c in label.scores for c in criteria):
            overall_pairs.append((score.value, sum(label.scores[c] for c in criteria) / len(criteria)))
            explicit = False
    rows = [{"line": label.line, "id": label.id, "human": label.scores,
             "judge": ({k: round(_to_scale(v), 4) for k, v in score.parts.items()} |
                       {OVERALL: round(_to_scale(score.value), 4)}) if score.value is not None else None,
             "error": score.error, "rationale": score.rationale} for label, score in zip(labels, scores)]
    scored = sum(1 for s in scores if s.value is not None)
    return {"label_rows": len(labels), "scored_rows": scored, "unscored_rows": len(labels) - scored,
            "criteria": per,
            OVERALL: _series([j for j, _ in overall_pairs], [h for _, h in overall_pairs], explicit),
            "rows": rows}


# ----------------------------------------------------------------------------------------------- the report


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _span(entry: dict[str, Any], show: Any) -> str:
    return "" if entry.get("low") is None else f"[{show(entry['low'])}, {show(entry['high'])}]"


def summary_rows(report: dict[str, Any]) -> list[list[str]]:
    """[metric, value, 95% interval, n, note] rows: the printed table and judge_check.md's."""
    if report["kind"] == PAIRWISE:
        p = report[PAIRWISE]
        bias = p["position_bias"]
        return [
            ["accuracy (a/b/tie)", _pct(p["accuracy"]["value"]), _span(p["accuracy"], _pct),
             str(p["accuracy"]["n"]), "label rows"],
            ["accuracy without ties", _pct(p["accuracy_without_ties"]["value"]), "",
             str(p["accuracy_without_ties"]["n"]), "rows where neither said tie"],
            ["Cohen's kappa (a/b/tie)", _num(p["kappa"]["value"]), _span(p["kappa"], _num), str(p["kappa"]["n"]),
             "label rows"],
            ["position bias", _pct(bias["rate"]), _span(bias, _pct), str(bias["n"]),
             f"pairs; first slot {bias['first']}, second slot {bias['second']}"],
            ["consistency", _pct(bias["consistency"]), "", str(bias["n"]),
             f"pairs; {bias['partial']} decided in one order only"],
            ["first-slot picks", _pct(p["first_position_rate"]), "", "", "of decisive single verdicts"],
            ["unscored", str(p["unscored_rows"]), "", str(p["label_rows"]),
             f"label rows ({p['unscored_pairs']} of {p['pairs']} pairs): judge failed, left out"],
        ]
    s = report[SCORES]
    rows = [[f"spearman {name}", _num(c["spearman"]), "", str(c["n"]),
             f"weighted kappa {_num(c['weighted_kappa'])}" if c["weighted_kappa"] is not None
             else f"weighted kappa: {c['kappa_note']}"] for name, c in [*s["criteria"].items(), (OVERALL, s[OVERALL])]]
    rows.append(["unscored", str(s["unscored_rows"]), "", str(s["label_rows"]), "label rows: judge failed, left out"])
    return rows


def _header(report: dict[str, Any]) -> str:
    judge = report["judge"]
    section = report[report["kind"]]
    kind = "score" if report["kind"] == SCORES else report["kind"]
    return (f"{report['labels']}: {section['label_rows']} {kind} labels; judge {judge['model']} at "
            f"{judge['endpoint']} (rubric {judge['rubric']}, from {judge['source']})")


def text_table(report: dict[str, Any]) -> str:
    """The summary as aligned plain text, for the terminal."""
    columns = ["metric", "value", "95% interval", "n", "note"]
    rows = [columns, *summary_rows(report)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns) - 1)]
    lines = [_header(report)]
    for row in rows:
        lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    return "\n".join(line.rstrip() for line in lines)


def render_markdown(report: dict[str, Any]) -> str:
    from rlmed.eval.markdown import md_table

    kind = report["kind"]
    section = report[kind]
    lines = [f"# Judge check: {Path(report['labels']).name}", "", _header(report), "",
             *md_table(["metric", "value", "95% interval", "n", "note"], summary_rows(report)), ""]
    if kind == PAIRWISE:
        matrix = section["confusion"]
        lines += ["## Confusion (rows: human, columns: judge)", "",
                  *md_table(["human \\ judge", *PAIR_LABELS],
                            [[label, *map(str, counts)] for label, counts in zip(PAIR_LABELS, matrix["counts"])]), ""]
        if section["by_annotator"]:
            lines += ["## By annotator", "", *md_table(
                ["annotator", "n", "accuracy", "kappa"],
                [[name, str(a["n"]), _pct(a["accuracy"]), _num(a["kappa"])]
                 for name, a in section["by_annotator"].items()]), ""]
        disagree = [r for r in section["rows"] if r["judge"] is not None and r["judge"] != r["human"]]
        if disagree:
            lines += [f"## Disagreements ({len(disagree)})", "", *md_table(
                ["line", "id", "human", "judge", "verdict A,B", "verdict B,A"],
                [[str(r["line"]), r["id"] or "", r["human"], r["judge"], *(v or "–" for v in r["verdicts"])]
                 for r in disagree[:MAX_LISTED]]), ""]
    unscored = [r for r in section["rows"] if r["judge"] is None]
    if unscored:
        lines += [f"## Unscored ({len(unscored)}: left out of every number)", "", *md_table(
            ["line", "id", "error"],
            [[str(r["line"]), r["id"] or "", next((e for e in r.get("errors", [r.get("error")]) if e), "")[:200]]
             for r in unscored[:MAX_LISTED]]), ""]
    lines += ["## Definitions", "", *(f"- **{k}**: {v}" for k, v in report["definitions"].items()), ""]
    return "\n".join(lines)


def run_check(labels_path: Path, kind: str, labels: Sequence[Any], judge: Any, judge_info: dict[str, Any],
              out_dir: Path, seed: int = 42, resamples: int = RESAMPLES) -> dict[str, Any]:
    """Judge the labels, write judge_check.json and judge_check.md into out_dir, return the report."""
    from rlmed.artifacts import atomic_write_json, atomic_write_text

    if kind == PAIRWISE:
        section = check_pairwise(judge, labels, seed, resamples)
    else:
        section = check_scores(judge, labels, judge_info.get("criteria"), labels_path.name)
    stats = getattr(judge, "stats", None)
    report = {"kind": kind, "labels": str(labels_path), "judge": judge_info, kind: section,
              "statistics": {"seed": seed, "resamples": resamples, "confidence": CONFIDENCE},
              "definitions": {k: DEFINITIONS[k] for k in (PAIRWISE_TERMS if kind == PAIRWISE else SCORE_TERMS)},
              "judge_stats": stats.as_dict() if stats is not None and hasattr(stats, "as_dict") else None}
    # Rationales and errors may quote the (masked) dialogue: the files are private, as the stage outputs are.
    atomic_write_json(out_dir / JSON_NAME, report, private=True)
    atomic_write_text(out_dir / MD_NAME, render_markdown(report), private=True)
    return report


def first_error(report: dict[str, Any]) -> str | None:
    """The first judge error of the report's rows (for the message when nothing was scored)."""
    for row in report[report["kind"]]["rows"]:
        for error in row.get("errors", [row.get("error")]):
            if error:
                return error
    return None


__all__ = ["JudgeCheckError", "PairLabel", "ScoreLabel", "build_judge", "check_criteria", "check_pairwise",
           "check_scores", "describe_judge", "first_error", "judge_from_file", "judge_from_recipe",
           "read_labels", "render_markdown", "run_check", "select_judge", "summary_rows", "text_table"]
