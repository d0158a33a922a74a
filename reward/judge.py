"""An LLM judge as a reward source: HuatuoGPT-style AI feedback with the real doctor's reply as reference.

Scale: the judge scores each criterion 1..10; `Score.parts` and `Score.value` are both mapped linearly to
0..1 as `(s - 1) / 9`, so a judge's value composes with the other 0..1 sources (similarity, rules) without
rescaling, and a parts entry can be compared with the value directly.

Modes: "pointwise" sends one request per sample; "listwise" sends all candidates that share `Sample.group` in
one request (shuffled by a content-seeded order, mapped back by the parser), which is cheaper and lets the judge
rank candidates against each other. Samples without a group — or alone in their group — are scored pointwise.

Text is de-identified (reward.deid) before it is put into any request. A request that fails after the client's
retries yields `Score.failed(reason)`, never an invented score.
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

if TYPE_CHECKING:
    from reward.client import ChatClient

logger = logging.getLogger(__name__)


def _to_unit(score: float) -> float:
    """Map a 1..10 judge score onto 0..1."""
    return (score - 1.0) / 9.0


class LLMJudge:
    """Scores samples with an OpenAI-compatible chat model following a rubric (default: reward/rubrics/huatuo_zh.md).

    weights: criterion -> weight for the overall value (criteria left out weigh 0). None: the judge's own
    "overall" when it gives one, else the plain mean of the criteria.
    The remaining arguments configure reward.client.ChatClient (concurrency, rate limits, retries, prices) and
    its persistent cache (cache_dir; one shard per writer process).
    """

    def __init__(
        self,
        model: str,
        base_url: str = "https://api.openai.com/v1",
        api_key_env: str | None = "OPENAI_API_KEY",  # None: a local server that needs no key
        mode: Literal["pointwise", "listwise"] = "pointwise",
        rubric: str | None = None,
        weights: dict[str, float] | None = None,
        temperature: float = 0.0,
        max_tokens: int = 512,
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
    ) -> None:
        if mode not in ("pointwise", "listwise"):
            raise ValueError(f"mode must be 'pointwise' or 'listwise', got {mode!r}")
        self.model, self.base_url, self.mode = model, base_url, mode
        self.rubric = load_rubric(rubric)
        if weights is not None:
            unknown = set(weights) - set(self.rubric.criteria)
            if unknown:
                raise ValueError(f"weights name criteria not in the rubric: {sorted(unknown)}; "
                                 f"rubric criteria: {list(self.rubric.criteria)}")
            if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
                raise ValueError("weights must be non-negative with a positive sum")
        self.weights = weights
        self.sampling = {"temperature": temperature, "max_tokens": max_tokens}
        self.deid = Deidentifier(deid_patterns, enabled=deidentify)
        # The namespace is the rubric's hash: editing the rubric must never serve replies judged by the old one.
        self.cache_namespace = self.rubric.sha256
        self._client_args: dict[str, Any] = dict(
            base_url=base_url, model=model, api_key_env=api_key_env, max_concurrency=max_concurrency,
            requests_per_minute=requests_per_minute, tokens_per_minute=tokens_per_minute,
            max_retries=max_retries, parse_retries=parse_retries, timeout_s=timeout_s,
            price_per_million_input=price_per_million_input, price_per_million_output=price_per_million_output,
        )
        self._cache_dir, self._cache_shard = cache_dir, cache_shard
        self._client: ChatClient | None = None

    def __repr__(self) -> str:
        return f"LLMJudge(model={self.model!r}, mode={self.mode!r}, rubric={self.rubric.name!r})"

    # The client (and the openai package behind it) is imported on first use, so building prompts and
    # parsing replies work without it.
    @property
    def client(self) -> "ChatClient":
        """The underlying ChatClient, created on first use."""
        if self._client is None:
            from reward.cache import ChatCache
            from reward.client import ChatClient

            cache = ChatCache(self._cache_dir, shard=self._cache_shard) if self._cache_dir else None
            self._client = ChatClient(**self._client_args, cache=cache)
        return self._client

    @property
    def stats(self) -> Any:
        """The client's counters (requests, cache hits, retries, failures, tokens, cost); `.as_dict()`."""
        return self.client.stats

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

    def _masked(self, sample: Sample) -> tuple[list[dict[str, Any]], str, str | None]:
        ref = self.deid.mask(sample.reference) if sample.reference is not None else None
        return self.deid.mask_messages(sample.prompt), self.deid.mask(sample.completion), ref

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
            prompt, answer, ref = self._masked(samples[i])
            requests.append(ChatRequest(
                build_pointwise(self.rubric, prompt, answer, ref),
                parse=lambda text: parse_pointwise(text, criteria),
                cache_namespace=self.cache_namespace, sampling=dict(self.sampling),
            ))
        for members in groups:
            prompt, _, ref = self._masked(samples[members[0]])
            answers = [self.deid.mask(samples[i].completion) for i in members]
            listwise = build_listwise(self.rubric, prompt, answers, ref)
            requests.append(ChatRequest(
                listwise.messages,
                parse=lambda text, order=listwise.order: parse_listwise(text, criteria, order),
                cache_namespace=self.cache_namespace, sampling=dict(self.sampling),
            ))
        results = await self.client.chat_many(requests, desc=f"judge {self.model}") if requests else []

        scores: list[Score | None] = [None] * len(samples)
        for i, result in zip(singles, results[: len(singles)]):
            if isinstance(result, JudgeError):
                scores[i] = Score.failed(f"judge failed: {result}", usage={"attempts": result.attempts})
            else:
                scores[i] = self._score_of(result.parsed, _usage(result, share=1))
        for members, result in zip(groups, results[len(singles):]):
            if isinstance(result, JudgeError):
                for i in members:
                    scores[i] = Score.failed(f"judge failed (listwise group): {result}",
                                             usage={"attempts": result.attempts / len(members)})
                continue
            usage = _usage(result, share=len(members))
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
                request, parse=parse_compare, cache_namespace=self.cache_namespace, **self.sampling
            )
        except JudgeError as exc:
            return {"winner": None, "rationale": "", "error": str(exc), "usage": {"attempts": exc.attempts}}
        return {"winner": result.parsed["winner"].lower(), "rationale": result.parsed["rationale"],
                "usage": _usage(result, share=1)}

    async def aclose(self) -> None:
        """Close the HTTP connections and flush the cache."""
        if self._client is not None:
            await self._client.aclose()
            if self._client.cache is not None:
                self._client.cache.close()


def _usage(result: Any, share: int) -> dict[str, Any]:
    """A reply's usage for one sample: numeric counters divided by `share` (the samples that shared the request),
    so summing usage over scores gives the true total."""
    usage: dict[str, Any] = {
        k: (v / share if share > 1 else v) for k, v in result.usage.items() if isinstance(v, (int, float))
    }
    usage.update(cached=result.cached, attempts=result.attempts / share if share > 1 else result.attempts)
    if share > 1:
        usage["shared_by"] = share
    return usage


__all__ = ["LLMJudge"]
