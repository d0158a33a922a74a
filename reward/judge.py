"""An LLM judge as a reward source: HuatuoGPT-style AI feedback with the real doctor's reply as reference.

Scale: the judge scores each criterion 1..10; `Score.parts` and `Score.value` are both mapped linearly to
0..1 as `(s - 1) / 9`, so a judge's value composes with the other 0..1 sources (similarity, rules) without
rescaling, and a parts entry can be compared with the value directly.

Modes: "pointwise" sends one request per sample; "listwise" sends all candidates that share `Sample.group` in
one request (shuffled by a content-seeded order, mapped back by the parser), which is cheaper and lets the judge
rank candidates against each other. Samples without a group — or alone in their group — are scored pointwise.

Text is de-identified (reward.deid) before it is put into any request. A request that fails after the client's
retries yields `Score.failed(reason)`, never an invented score.

A verdict is taken only from a reply the judge finished (finish_reason "stop": a reply cut off by max_tokens may
end right after quoting a candidate's self-awarded scores) that is exactly one JSON object carrying the request's
fence tag (reward.prompts.reply_object). JSON mode (`response_format: json_object`) is asked for by default;
servers that do not know it ignore it (transformers serve) — set json_mode False for one that refuses it.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Literal, Sequence

from reward.base import Sample, Score
from reward.deid import Deidentifier
from reward.prompts import (
    Judgement,
    build_compare,
    build_listwise,
    build_pointwise,
    load_rubric,
    parse_compare,
    parse_listwise,
    parse_pointwise,
)
from reward.urls import public_url

if TYPE_CHECKING:
    from reward.client import ChatClient, ChatResult

logger = logging.getLogger(__name__)
DEFAULT_BASE_URL = "https://api.openai.com/v1"  # where a judge without base_url goes, if allowed_hosts lists it


def _to_unit(score: float) -> float:
    """Map a 1..10 judge score onto 0..1."""
    return (score - 1.0) / 9.0


# The constructor arguments every chat judge takes (LLMJudge, reward.rubric.RubricJudge) and hands to
# ChatJudge._connect: each judge lists them in its own signature, which recipes are checked against
# (rlmed.components) and which tells rlmed to give it a cache and an audit log (rlmed.rl.sources).
CLIENT_ARGUMENTS = ("api_key_env", "max_concurrency", "requests_per_minute", "tokens_per_minute", "max_retries",
                    "parse_retries", "timeout_s", "price_per_million_input", "price_per_million_output",
                    "allowed_hosts")


class ChatJudge:
    """What every judge that asks an OpenAI-compatible chat endpoint shares: the host policy, the sampling settings
    (JSON mode), de-identification, the ChatClient with its cache and audit log built on first use, the counters,
    and closing. A subclass's constructor calls `_connect(locals())` with its own arguments: model, base_url,
    temperature, max_tokens, json_mode, cache_dir, cache_shard, deidentify, deid_patterns, audit_path,
    audit_stage and CLIENT_ARGUMENTS."""

    model: str
    base_url: str

    def _connect(self, arguments: dict[str, Any]) -> None:
        # Data goes only where the recipe says (reward.hosts): a base_url the recipe leaves out means OpenAI's
        # API, which is then not "named", and must be listed in allowed_hosts to be reached.
        base_url = arguments["base_url"]
        named = base_url is not None
        self.model, self.base_url = arguments["model"], base_url if named else DEFAULT_BASE_URL
        self.sampling: dict[str, Any] = {"temperature": arguments["temperature"],
                                         "max_tokens": arguments["max_tokens"]}
        if arguments["json_mode"]:
            self.sampling["response_format"] = {"type": "json_object"}
        self.deid = Deidentifier(arguments["deid_patterns"], enabled=arguments["deidentify"])
        self._client_args: dict[str, Any] = dict(
            base_url=self.base_url, model=self.model, named_in_recipe=named, config_name="judge",
            **{name: arguments[name] for name in CLIENT_ARGUMENTS})
        self._cache_dir, self._cache_shard = arguments["cache_dir"], arguments["cache_shard"]
        self._audit_path, self._audit_stage = arguments["audit_path"], arguments["audit_stage"]
        self._client: ChatClient | None = None

    # The client (and the openai package behind it) is imported on first use, so building prompts and
    # parsing replies work without it.
    @property
    def client(self) -> "ChatClient":
        """The underlying ChatClient, created on first use."""
        if self._client is None:
            from reward.cache import ChatCache
            from reward.client import ChatClient

            from reward.audit import AuditLog

            cache = ChatCache(self._cache_dir, shard=self._cache_shard) if self._cache_dir else None
            audit = AuditLog(self._audit_path, stage=self._audit_stage) if self._audit_path else None
            self._client = ChatClient(**self._client_args, cache=cache, audit=audit)
        return self._client

    @property
    def stats(self) -> "JudgeStats":
        """The client's counters (requests, cache hits, retries, failures, tokens, cost) and the cache rows skipped
        on opening; `.as_dict()`."""
        return JudgeStats(self.client, self.deid.describe(), public_url(self.base_url))

    def _masked(self, sample: Sample, counts: dict[str, int]) -> tuple[list[dict[str, Any]], str, str | None]:
        ref = self.deid.mask(sample.reference, counts) if sample.reference is not None else None
        return self.deid.mask_messages(sample.prompt, counts), self.deid.mask(sample.completion, counts), ref

    async def aclose(self) -> None:
        """Close the HTTP connections and flush the cache."""
        if self._client is not None:
            await self._client.aclose()
            if self._client.cache is not None:
                self._client.cache.close()


class LLMJudge(ChatJudge):
    """Scores samples with an OpenAI-compatible chat model following a rubric (default: reward/rubrics/huatuo_zh.md).

    weights: criterion -> weight for the overall value (criteria left out weigh 0). None: the judge's own
    "overall" when it gives one, else the plain mean of the criteria.
    json_mode: ask the server for a JSON object reply (`response_format`); False for a server that rejects it.
    The remaining arguments configure reward.client.ChatClient (concurrency, rate limits, retries, prices) and
    its persistent cache (cache_dir; one shard per writer process).
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",  # None: a local server that needs no key
        mode: Literal["pointwise", "listwise"] = "pointwise",
        rubric: str | None = None,
        weights: dict[str, float] | None = None,
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
        if mode not in ("pointwise", "listwise"):
            raise ValueError(f"mode must be 'pointwise' or 'listwise', got {mode!r}")
        self._connect(locals())
        self.mode = mode
        self.rubric = load_rubric(rubric)
        if weights is not None:
            unknown = set(weights) - set(self.rubric.criteria)
            if unknown:
                raise ValueError(f"weights name criteria not in the rubric: {sorted(unknown)}; "
                                 f"rubric criteria: {list(self.rubric.criteria)}")
            if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
                raise ValueError(f"weights must be non-negative with a positive sum, got {weights}")
        self.weights = weights
        # The namespace holds the rubric's hash: editing the rubric must never serve replies judged by the old one;
        # and the endpoint (without credentials): two servers that both call their model "judge" are different
        # judges, and one must never be served the other's verdicts.
        self.cache_namespace = f"{self.rubric.sha256}@{public_url(self.base_url)}"

    def __repr__(self) -> str:
        return f"LLMJudge(model={self.model!r}, mode={self.mode!r}, rubric={self.rubric.name!r})"

    def overall(self, judgement: Judgement) -> float:
        """The overall 1..10 score of a verdict, per the weighting rule in the class docstring."""
        if self.weights is not None:
            total = sum(self.weights.values())
            return sum(w * judgement.scores[c] for c, w in self.weights.items()) / total
        if judgement.overall is not None:
            return judgement.overall
        return sum(judgement.scores.values()) / len(judgement.scores)

    def _score_of(self, judgement: Judgement, usage: dict[str, Any]) -> Score:
        return Score(
            value=_to_unit(self.overall(judgement)),
            parts={c: _to_unit(s) for c, s in judgement.scores.items()},
            rationale=judgement.rationale,
            usage=usage,
        )

    def _plan(self, samples: Sequence[Sample]) -> tuple[list[int], list[list[int]]]:
        """Split sample indices into pointwise singles and listwise groups (same group id AND same prompt)."""
        if self.mode == "pointwise":
            return list(range(len(samples))), []
        groups: OrderedDict[str, list[int]] = OrderedDict()
        singles: list[int] = []
        for i, sample in enumerate(samples):
            if sample.group is None:
                singles.append(i)
            else:
                groups.setdefault(sample.group, []).append(i)
        listwise: list[list[int]] = []
        for group, members in groups.items():
            first = samples[members[0]]
            same = all(
                list(samples[i].prompt) == list(first.prompt) and samples[i].reference == first.reference
                for i in members
            )
            if len(members) > 1 and same:
                listwise.append(members)
            else:
                if len(members) > 1:
                    logger.warning("group %r mixes prompts or references; scoring its samples pointwise", group)
                singles.extend(members)
        return sorted(singles), listwise

    async def score(self, samples: Sequence[Sample]) -> list[Score]:
        """One Score per sample, in order; value in 0..1, or None with the reason when the judge failed."""
        from reward.client import ChatRequest, JudgeError

        criteria = self.rubric.criteria
        singles, groups = self._plan(samples)
        requests: list[ChatRequest[Any]] = []
        for i in singles:
            counts: dict[str, int] = {}
            prompt, answer, ref = self._masked(samples[i], counts)
            single = build_pointwise(self.rubric, prompt, answer, ref)
            requests.append(ChatRequest(
                single.messages,
                parse=lambda text, tag=single.tag: parse_pointwise(text, criteria, tag),
                cache_namespace=self.cache_namespace, sampling=dict(self.sampling),
                record_id=sample_record_id(samples[i]), masked=counts,
            ))
        for members in groups:
            counts = {}
            prompt, _, ref = self._masked(samples[members[0]], counts)
            answers = [self.deid.mask(samples[i].completion, counts) for i in members]
            listwise = build_listwise(self.rubric, prompt, answers, ref)
            requests.append(ChatRequest(
                listwise.messages,
                parse=lambda text, order=listwise.order, tag=listwise.tag: parse_listwise(text, criteria, order, tag),
                cache_namespace=self.cache_namespace, sampling=dict(self.sampling),
                record_id=sample_record_id(samples[members[0]]), masked=counts,
            ))
        results = await self.client.chat_many(requests, desc=f"judge {self.model}") if requests else []

        scores: list[Score | None] = [None] * len(samples)
        for i, result in zip(singles, results[: len(singles)]):
            if isinstance(result, JudgeError):
                scores[i] = Score.failed(f"judge failed: {result}", usage={"attempts": result.attempts})
            elif not verdict_finished(result):
                scores[i] = Score.failed(unfinished_reason(result), usage=usage_share(result, share=1))
            else:
                scores[i] = self._score_of(result.parsed, usage_share(result, share=1))
        for members, result in zip(groups, results[len(singles):]):
            if isinstance(result, JudgeError) or not verdict_finished(result):
                reason = f"judge failed: {result}" if isinstance(result, JudgeError) else unfinished_reason(result)
                for i in members:
                    scores[i] = Score.failed(f"{reason} (listwise group)",
                                             usage={"attempts": result.attempts / len(members)})
                continue
            usage = usage_share(result, share=len(members))
            for i, judgement in zip(members, result.parsed):
                scores[i] = self._score_of(judgement, dict(usage))
        return scores  # type: ignore[return-value]  # every index is planned exactly once

    async def compare(
        self, prompt: str | Sequence[dict[str, Any]], answer_a: str, answer_b: str, reference: str | None
    ) -> dict[str, Any]:
        """Which answer is better: {"winner": "a" | "b" | "tie", "rationale", "usage"}.

        Run it twice with the answers swapped to cancel position bias (HuatuoGPT's protocol). When the request
        fails the result is {"winner": None, "error": reason}: no verdict is invented.
        """
        from reward.client import JudgeError

        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        request = build_compare(
            self.rubric, self.deid.mask_messages(messages), self.deid.mask(answer_a), self.deid.mask(answer_b),
            self.deid.mask(reference) if reference is not None else None,
        )
        try:
            result = await self.client.chat(
                request.messages, parse=lambda text: parse_compare(text, request.tag),
                cache_namespace=self.cache_namespace, **self.sampling,
            )
        except JudgeError as exc:
            return {"winner": None, "rationale": "", "error": str(exc), "usage": {"attempts": exc.attempts}}
        if not verdict_finished(result):
            return {"winner": None, "rationale": "", "error": unfinished_reason(result),
                    "usage": usage_share(result, share=1)}
        return {"winner": result.parsed["winner"].lower(), "rationale": result.parsed["rationale"],
                "usage": usage_share(result, share=1)}

class JudgeStats:
    """The client's ChatStats (its fields read through), plus in `as_dict` the rows the cache skipped on opening
    as cache_unreadable / cache_invalid / cache_tampered: each such row's request was a miss, asked again, and a
    run's metrics must show that it happened. `as_dict` also says where requests went (the endpoint without
    credentials) and what was masked (reward.deid's describe): a manifest must show a weakened masking."""

    def __init__(self, client: "ChatClient", deidentification: dict[str, Any] | None = None,
                 endpoint: str | None = None) -> None:
        self._client = client
        self._deidentification, self._endpoint = deidentification, endpoint

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # never look private names up on the client (no recursion while half-built)
            raise AttributeError(name)
        return getattr(self._client.stats, name)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = self._client.stats.as_dict()
        if self._client.cache is not None:
            skipped = self._client.cache.stats.as_dict()
            out.update({f"cache_{k}": v for k, v in skipped.items() if k != "loaded"})
        if self._endpoint is not None:
            out["endpoint"] = self._endpoint
        if self._deidentification is not None:
            out["deidentification"] = self._deidentification
        return out


def verdict_finished(result: "ChatResult[Any]") -> bool:
    """Whether the judge ended its reply itself. `finish_reason` is the server's own word for the first choice
    (ChatResult.finish_reason: str | None, None when the server gave none); anything but "stop" — "length" above
    all, a reply cut off by max_tokens — is not a verdict. The client re-asks a reply that names another reason
    and caches only "stop" ones, but hands back one whose server named none (fine for generation); a verdict
    needs the server's word that the reply is whole, so that is refused here."""
    return result.finish_reason == "stop"


def unfinished_reason(result: "ChatResult[Any]") -> str:
    return f"judge reply not finished (finish_reason={result.finish_reason!r}); no verdict taken from it"


def sample_record_id(sample: Sample) -> str | None:
    """The id of the record a sample came from, when its metadata has one (the audit log hashes free text)."""
    for key in ("id", "record_id", "prompt_id"):
        value = sample.metadata.get(key)
        if value is not None:
            return str(value)
    return None


def usage_share(result: Any, share: int) -> dict[str, Any]:
    """A reply's usage for one sample: numeric counters divided by `share` (the samples that shared the request),
    so summing usage over scores gives the true total."""
    usage: dict[str, Any] = {
        k: (v / share if share > 1 else v) for k, v in result.usage.items() if isinstance(v, (int, float))
    }
    usage.update(cached=result.cached, attempts=result.attempts / share if share > 1 else result.attempts)
    if share > 1:
        usage["shared_by"] = share
    return usage


__all__ = ["ChatJudge", "JudgeStats", "LLMJudge", "sample_record_id", "unfinished_reason", "usage_share",
           "verdict_finished"]
