"""Rubric rewards: an answer graded against its prompt's own rubric items, as HealthBench grades (RaR's rewards).

Each prompt carries rubric items `{criterion, points, tags}` (HealthBench's layout; negative points for a mistake
to avoid): in `Sample.metadata["rubrics"]`, or in a rubrics file (rubrics.jsonl, which the `rubrics` stage
writes and a HealthBench file already is) joined to the sample by prompt id. The join key is
`metadata["prompt_id"]` when the sample has one, else `prompt_key(sample.prompt)`, a hash of the dialogue's roles
and texts — the key the `rubrics` stage writes as each row's prompt_id, and the one computed from every file row's
`prompt`, so rubrics join back to any stage's samples without ids.

Grading (HealthBench): the judge says per item whether its criterion is met — for a negative item, whether the
answer makes that mistake. score = points of the met items / the positive points. `parts` hold `item:<k>` (1.0
met, 0.0 not, k counting the prompt's items from 1) and `tag:<name>` (the same formula on the items with that
tag; left out for a tag without positive items, as HealthBench leaves it undefined). With `clip` (the default,
for use as a reward) the value and the tag parts are clipped to 0..1; without, they are HealthBench's per-example
scores, which its benchmark averages and then clips (rlmed.eval.benchmark_scores). Modes: "per_criterion" sends
one request per item (HealthBench's grader); "all_at_once" one request per sample with every item numbered
(cheaper; RaR's implicit variant, answered per item so the same formula and parts apply).

Unscored, never 0: a sample without a rubric, or one item the judge could not grade (the client's retries and
re-asks spent, or a reply not finished), gets `Score.failed`.

The same judge writes rubrics (`write_rubrics`, used by the `rubrics` stage): 7-20 items per prompt in RaR's
categories from the doctor's reply, validated or left out (reward.rubric_prompts). Every request goes through
reward.client as LLMJudge's do: cache, retries, rate limits, cost, the host policy, the audit log, and text
de-identified (reward.deid) before it is put into a request — criteria included, since people edit them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

from reward.base import Sample, Score
from reward.judge import ChatJudge, sample_record_id, unfinished_reason, usage_share, verdict_finished
from reward.prompts import Messages
from reward.rubric_prompts import (
    RubricItem,
    Verdict,
    build_grading,
    build_writing,
    check_items,
    check_language,
    parse_grading,
    parse_writing,
)
from reward.urls import public_url

if TYPE_CHECKING:
    from reward.client import ChatRequest, ChatResult, JudgeError

# Bumped when the meaning of a verdict changes (the messages themselves are in every cache key already).
PROTOCOL = "rubric/1"


def prompt_key(prompt: Messages) -> str:
    """The join key of a dialogue: a hash of its messages' roles and texts only, so extra message fields (names,
    ids a dataset adds) do not change it, while any edit of the text does."""
    turns = []
    for message in prompt:
        content = message.get("content", "")
        if not isinstance(content, str):  # multi-part content: its text parts, as the judge reads them
            content = "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
        turns.append([str(message.get("role", "")), content])
    blob = json.dumps(turns, ensure_ascii=False, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


class RubricFileError(ValueError):
    """A bad rubrics file row: `file:line: reason`."""


def _check_prompt(value: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), (str, list))
            for m in value):
        raise RubricFileError(f"{where}: 'prompt' must be a non-empty list of {{role, content}} messages")
    return value


def load_rubric_file(path: str | Path) -> dict[str, tuple[RubricItem, ...] | None]:
    """The items of every row of a rubrics file, by prompt id and by prompt_key of the row's prompt. A row is
    `{"prompt_id"?, "prompt"?: [messages], "rubrics": [{criterion, points, tags}]}` with an id or a prompt (or
    both); other fields are kept out of the way (HealthBench rows carry many). Any bad row raises
    RubricFileError naming file:line and what to fix, as does a prompt_id given twice, or a prompt given twice
    where a row has no id to tell them apart. Rows with their own ids may share a prompt with other rubrics
    (a benchmark may ask one question twice): that prompt maps to None, joinable by id only."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except OSError as exc:
        raise RubricFileError(f"{path}: cannot read the rubrics file ({exc.strerror or exc})") from None
    by_key: dict[str, tuple[RubricItem, ...] | None] = {}
    first: dict[str, tuple[int, bool]] = {}  # key -> (line, whether that row had an id)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RubricFileError(f"{where}: not a JSON object ({exc.msg} at column {exc.colno})") from None
        if not isinstance(row, dict):
            raise RubricFileError(f"{where}: expected a JSON object, got {type(row).__name__}")
        try:
            items = check_items(row.get("rubrics"), "'rubrics'")
        except ValueError as exc:
            raise RubricFileError(f"{where}: {exc}") from None
        prompt_id = row.get("prompt_id")
        if prompt_id is not None:
            if not isinstance(prompt_id, (str, int)) or isinstance(prompt_id, bool):
                raise RubricFileError(f"{where}: 'prompt_id' must be a string or an integer")
            if str(prompt_id) in first:
                raise RubricFileError(f"{where}: prompt_id {prompt_id} is also on line {first[str(prompt_id)][0]}; "
                                      f"keep one row per prompt")
            first[str(prompt_id)], by_key[str(prompt_id)] = (number, True), items
        if row.get("prompt") is not None:
            key = prompt_key(_check_prompt(row["prompt"], where))
            if key in first and by_key[key] != items:
                if not (first[key][1] and prompt_id is not None):
                    raise RubricFileError(f"{where}: the same prompt as line {first[key][0]} with another rubric; "
                                          f"keep one row per prompt, or give both rows a prompt_id")
                by_key[key] = None
            elif key not in first:
                first[key], by_key[key] = (number, prompt_id is not None), items
        elif prompt_id is None:
            raise RubricFileError(f"{where}: a row needs 'prompt_id' or 'prompt' to be joined to its samples")
    return by_key


def rubric_score(items: Sequence[RubricItem], met: Sequence[bool]) -> float:
    """HealthBench's score: the points of the met items (a met negative item subtracts) over the positive points.
    Not clipped; ValueError when no item is positive."""
    possible = sum(item.points for item in items if item.points > 0)
    if possible <= 0:
        raise ValueError("no item with positive points")
    return sum(item.points for item, hit in zip(items, met) if hit) / possible


def score_of(items: Sequence[RubricItem], verdicts: Sequence[Verdict], usage: dict[str, Any],
             clip: bool = True) -> Score:
    """The Score of a graded sample: the value and a part per item and per tag (module docstring)."""
    met = [v.met for v in verdicts]
    bound = (lambda x: min(1.0, max(0.0, x))) if clip else (lambda x: x)
    parts = {f"item:{k}": float(hit) for k, hit in enumerate(met, 1)}
    for tag in sorted({tag for item in items for tag in item.tags}):
        mine = [(item, hit) for item, hit in zip(items, met) if tag in item.tags]
        if any(item.points > 0 for item, _ in mine):
            parts[f"tag:{tag}"] = bound(rubric_score([i for i, _ in mine], [h for _, h in mine]))
    rationale = "\n".join(f"[{item.points:+g} {'met' if v.met else 'not met'}] {item.criterion}"
                          + (f" — {v.explanation}" if v.explanation else "") for item, v in zip(items, verdicts))
    return Score(value=bound(rubric_score(items, met)), parts=parts, rationale=rationale, usage=usage)


def _summed_usage(results: Sequence["ChatResult[Any]"]) -> dict[str, Any]:
    """The usage of a sample graded over several requests: counters added, cached only when every one was."""
    usage: dict[str, Any] = {}
    for result in results:
        for key, value in usage_share(result, share=1).items():
            if isinstance(value, bool):
                continue
            usage[key] = usage.get(key, 0) + value
    usage["cached"] = all(r.cached for r in results)
    usage["requests"] = len(results)
    return usage


@dataclass(frozen=True)
class Written:
    """What the writer made of one prompt: its items, or the reason there are none (error), and the usage."""

    items: tuple[RubricItem, ...] | None
    error: str | None
    usage: dict[str, Any]


class RubricJudge(ChatJudge):
    """Grades samples against their prompts' rubric items through an OpenAI-compatible chat model (module
    docstring), and writes rubrics (`write_rubrics`).

    rubrics: a rubrics.jsonl (or a HealthBench file) to join samples to; None: only samples whose metadata
    carries "rubrics" can be graded. mode: "per_criterion" (one request per item) or "all_at_once" (one per
    sample). language: the wording of the judge's instructions, "zh" or "en". with_reference: also show the
    doctor's reply while grading (HealthBench's grader does not; the items should say what matters). clip: the
    value and tag parts within 0..1 (a reward); false for HealthBench's unclipped per-example scores.
    The remaining arguments are LLMJudge's: the endpoint, sampling, client limits, cache, de-identification,
    host policy and audit log.
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",  # None: a local server that needs no key
        rubrics: str | None = None,
        mode: Literal["per_criterion", "all_at_once"] = "per_criterion",
        language: Literal["zh", "en"] = "zh",
        with_reference: bool = False,
        clip: bool = True,
        temperature: float = 0.0,
        max_tokens: int = 512,
        json_mode: bool = True,
        max_concurrency: int = 32,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        max_retries: int = 6,
        parse_retries: int = 2,
        timeout_s: float = 60.0,
        cache_dir: str | None = None,
        cache_shard: str = "0",
        deidentify: bool = True,
        deid_patterns: dict[str, str] | None = None,
        price_per_million_input: float = 0.0,
        price_per_million_output: float = 0.0,
        allowed_hosts: list[str] | None = None,
        audit_path: str | None = None,
        audit_stage: str | None = None,
    ) -> None:
        if mode not in ("per_criterion", "all_at_once"):
            raise ValueError(f"mode must be 'per_criterion' or 'all_at_once', got {mode!r}")
        self.language = check_language(language)
        self._connect(locals())
        self.mode, self.with_reference, self.clip = mode, with_reference, clip
        self.rubrics_path = rubrics
        self.rubrics = load_rubric_file(rubrics) if rubrics is not None else {}
        # The endpoint (without credentials) is in the namespace: two servers never share verdicts (as LLMJudge).
        self.cache_namespace = f"{PROTOCOL}@{public_url(self.base_url)}"

    def __repr__(self) -> str:
        return f"RubricJudge(model={self.model!r}, mode={self.mode!r}, rubrics={self.rubrics_path!r})"

    def rubric_for(self, sample: Sample) -> tuple[RubricItem, ...]:
        """The sample's items: its metadata's "rubrics", else the file's row for its prompt_id or prompt_key.
        ValueError (the reason it cannot be graded) when it has none, or a bad one."""
        if sample.metadata.get("rubrics") is not None:
            return check_items(sample.metadata["rubrics"], "sample metadata 'rubrics'")
        prompt_id = sample.metadata.get("prompt_id")
        by_id = prompt_id is not None and str(prompt_id) in self.rubrics
        key = str(prompt_id) if by_id else prompt_key(sample.prompt)
        if key not in self.rubrics:
            where = f"in {self.rubrics_path}" if self.rubrics_path else "(no rubrics file given)"
            raise ValueError(f"no rubric for this prompt {where}: neither metadata 'rubrics' nor a row for "
                             f"prompt_id {prompt_id!r} or prompt {key}")
        found = self.rubrics[key]
        if found is None:
            raise ValueError(f"rows of {self.rubrics_path} with different rubrics share this prompt ({key}); "
                             f"give the sample its row's prompt_id")
        return found

    def _requests(self, sample: Sample, items: tuple[RubricItem, ...]) -> list["ChatRequest[Any]"]:
        """The grading requests of one sample: one per item, or one for all; de-identified."""
        from reward.client import ChatRequest

        shown: dict[str, int] = {}  # identifiers masked in the dialogue and answer (the reference, if shown)
        masked_sample = Sample(sample.prompt, sample.completion, sample.reference if self.with_reference else None)
        prompt, answer, reference = self._masked(masked_sample, shown)
        groups = [[item] for item in items] if self.mode == "per_criterion" else [list(items)]
        requests: list[ChatRequest[Any]] = []
        for group in groups:
            counts = dict(shown)  # what the audit log says was masked in this request: its criteria too
            criteria = [RubricItem(self.deid.mask(i.criterion, counts), i.points, i.tags) for i in group]
            built = build_grading(prompt, answer, criteria, self.language, reference)
            requests.append(ChatRequest(
                built.messages, parse=lambda text, tag=built.tag, n=len(group): parse_grading(text, tag, n),
                cache_namespace=self.cache_namespace, sampling=dict(self.sampling),
                record_id=sample_record_id(sample), masked=counts))
        return requests

    async def score(self, samples: Sequence[Sample]) -> list[Score]:
        """One Score per sample, in order (value within 0..1 with clip), or None with the reason when it could not
        be graded."""
        scores: list[Score | None] = [None] * len(samples)
        plans: list[tuple[int, tuple[RubricItem, ...], int, int]] = []  # sample, items, first request, count
        requests: list[ChatRequest[Any]] = []
        for i, sample in enumerate(samples):
            try:
                items = self.rubric_for(sample)
            except ValueError as exc:
                scores[i] = Score.failed(str(exc))
                continue
            mine = self._requests(sample, items)
            plans.append((i, items, len(requests), len(mine)))
            requests.extend(mine)
        results = await self.client.chat_many(requests, desc=f"rubric judge {self.model}") if requests else []
        for i, items, first, count in plans:
            scores[i] = self._graded(items, results[first:first + count])
        return scores  # type: ignore[return-value]  # every index is filled: failed above or graded here

    def _graded(self, items: tuple[RubricItem, ...], results: Sequence["ChatResult[Any] | JudgeError"]) -> Score:
        from reward.client import JudgeError

        verdicts: list[Verdict] = []
        for k, result in enumerate(results):
            # Per criterion, request k grades item k + 1; all at once, the one request grades them all.
            which = f"item {k + 1} ({items[k].criterion[:40]!r})" if len(results) > 1 else "the rubric"
            if isinstance(result, JudgeError):
                attempts = sum(getattr(r, "attempts", 0) for r in results)
                return Score.failed(f"judge failed on {which}: {result}", usage={"attempts": attempts})
            if not verdict_finished(result):
                return Score.failed(f"{which}: {unfinished_reason(result)}", usage=_summed_usage([result]))
            verdicts.extend(result.parsed)
        return score_of(items, verdicts, _summed_usage(results), self.clip)  # type: ignore[arg-type]

    # ------------------------------------------------------------------------------------------- writing

    async def write_rubrics(self, prompts: Sequence[tuple[Messages, str]], *, min_items: int = 7,
                            max_items: int = 20, max_tokens: int = 2048) -> list[Written]:
        """Rubric items for each (dialogue, doctor's reply), grounded in the reply; a reply that does not validate
        after the client's re-asks leaves that prompt without items (`Written.error`), nothing is made up.
        max_tokens: the longest reply (twenty items in Chinese need far more than a verdict)."""
        from reward.client import ChatRequest, JudgeError

        if not 1 <= min_items <= max_items:
            raise ValueError(f"need 1 <= min_items <= max_items, got {min_items} and {max_items}")
        requests: list[ChatRequest[Any]] = []
        for messages, reference in prompts:
            counts: dict[str, int] = {}
            built = build_writing(self.deid.mask_messages(messages, counts), self.deid.mask(reference, counts),
                                  self.language, min_items, max_items)
            requests.append(ChatRequest(
                built.messages, parse=lambda text, tag=built.tag: parse_writing(text, tag, min_items, max_items),
                cache_namespace=f"{PROTOCOL}/write@{public_url(self.base_url)}",
                sampling={**self.sampling, "max_tokens": max_tokens}, masked=counts))
        results = await self.client.chat_many(requests, desc=f"rubric writer {self.model}") if requests else []
        written = []
        for result in results:
            if isinstance(result, JudgeError):
                written.append(Written(None, f"writer failed: {result}", {"attempts": result.attempts}))
            elif not verdict_finished(result):
                written.append(Written(None, unfinished_reason(result), usage_share(result, share=1)))
            else:
                written.append(Written(result.parsed, None, usage_share(result, share=1)))
        return written


__all__ = ["RubricFileError", "RubricJudge", "Written", "load_rubric_file", "prompt_key", "rubric_score",
           "score_of"]
