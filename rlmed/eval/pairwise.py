"""Pairwise LLM-judge evaluation of a model against a named baseline (HuatuoGPT / PediatricsGPT protocol).

Each eval row holds the prompt (chat messages), the model's answer, the baseline's answer and, optionally, the
real doctor's reply as the judge's reference. The judge is asked twice per row, once in each order:

    order 1: answer A = model,    answer B = baseline
    order 2: answer A = baseline, answer B = model

Each verdict ("a" / "b" / "tie") is mapped to the model's view (win / loss / tie), and the row's outcome is:

- "win" / "loss": both orders say so. A win needs the judge to prefer the model's answer in BOTH positions.
- "tie": anything else that was judged: both orders tie, the orders disagree (win in one, loss in the other),
  or one decides and the other ties. A verdict that flips with the order is the judge's position bias, not a
  preference, so it counts as a tie; this makes a judge that always picks the first (or second) answer produce
  only ties.
- "failed": either request got no verdict (the judge client's retries were spent, a 4xx, an unparseable reply).
  Failed rows are counted on their own, never turned into ties, and left out of the rates.

Rates are over the judged rows (n - failed): win_rate = win / judged, loss_rate, tie_rate likewise, and
win_rate_with_half_ties = (win + tie / 2) / judged. With no judged row every rate is None, not 0.

`judge` is anything with `async compare(prompt, answer_a, answer_b, reference) -> {"winner": "a"|"b"|"tie"|None,
"rationale", "usage", "error"?}` — `reward.judge.LLMJudge` is one. All 2n requests are issued concurrently
through a bounded pool of `max_pending` workers; the judge's client bounds what is actually in flight (its
max_concurrency and rate limits) and serves repeated requests from its cache.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Sequence

Outcome = Literal["win", "tie", "loss", "failed"]
Verdict = Literal["a", "b", "tie"]

_VERDICTS = ("a", "b", "tie")


class PairwiseJudge(Protocol):
    async def compare(
        self, prompt: Any, answer_a: str, answer_b: str, reference: str | None
    ) -> dict[str, Any]: ...


@dataclass(frozen=True)
class PairRow:
    """One eval case. prompt: chat messages [{"role", "content"}] (or a plain user string); answer: the model's
    answer; baseline: the baseline's answer; reference: the real doctor's reply, or None; id: a label for reports."""

    prompt: Sequence[dict[str, Any]] | str
    answer: str
    baseline: str
    reference: str | None = None
    id: str | None = None


@dataclass(frozen=True)
class RowOutcome:
    """A row's result. verdicts: the judge's raw winners as ("model first", "baseline first") — "a", "b", "tie",
    or None where that request failed; views: the same from the model's side ("win"/"loss"/"tie"/None)."""

    index: int
    outcome: Outcome
    verdicts: tuple[Verdict | None, Verdict | None]
    views: tuple[str | None, str | None]
    rationales: tuple[str, str]
    errors: tuple[str | None, str | None] = (None, None)
    id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "id": self.id, "outcome": self.outcome, "verdicts": list(self.verdicts),
                "views": list(self.views), "rationales": list(self.rationales), "errors": list(self.errors)}


def _rate(count: int, judged: int) -> float | None:
    return count / judged if judged else None


@dataclass
class PairwiseResult:
    """Per-row outcomes (in the order of the rows) plus totals; see the module docstring for the rules."""

    rows: list[RowOutcome]
    model: str = "model"
    baseline: str = "baseline"
    usage: dict[str, float] = field(default_factory=dict)  # numeric usage summed over all requests

    def _count(self, outcome: Outcome) -> int:
        return sum(1 for r in self.rows if r.outcome == outcome)

    @property
    def n(self) -> int:
        return len(self.rows)

    @property
    def win(self) -> int:
        return self._count("win")

    @property
    def tie(self) -> int:
        return self._count("tie")

    @property
    def loss(self) -> int:
        return self._count("loss")

    @property
    def failed(self) -> int:
        return self._count("failed")

    @property
    def judged(self) -> int:
        return self.n - self.failed

    @property
    def win_rate(self) -> float | None:
        return _rate(self.win, self.judged)

    @property
    def tie_rate(self) -> float | None:
        return _rate(self.tie, self.judged)

    @property
    def loss_rate(self) -> float | None:
        return _rate(self.loss, self.judged)

    @property
    def win_rate_with_half_ties(self) -> float | None:
        return (self.win + self.tie / 2) / self.judged if self.judged else None

    @property
    def consistency(self) -> float | None:
        """Share of judged rows whose two verdicts agree from the model's side (both win, loss or tie): low
        values mean the judge's verdicts follow the answer position more than the answers."""
        agree = sum(1 for r in self.rows if r.outcome != "failed" and r.views[0] == r.views[1])
        return _rate(agree, self.judged)

    @property
    def first_position_rate(self) -> float | None:
        """Among decisive single verdicts ("a" or "b"), the share that picked answer A: 0.5 for an unbiased
        judge over a symmetric design (each pair is shown in both orders)."""
        picks = [v for r in self.rows for v in r.verdicts if v in ("a", "b")]
        return sum(v == "a" for v in picks) / len(picks) if picks else None

    def summary(self) -> dict[str, Any]:
        """Totals and rates as one flat dict, for metrics files and reports."""
        return {
            "model": self.model, "baseline": self.baseline, "n": self.n, "judged": self.judged,
            "win": self.win, "tie": self.tie, "loss": self.loss, "failed": self.failed,
            "win_rate": self.win_rate, "tie_rate": self.tie_rate, "loss_rate": self.loss_rate,
            "win_rate_with_half_ties": self.win_rate_with_half_ties, "consistency": self.consistency,
            "first_position_rate": self.first_position_rate, "usage": dict(self.usage),
        }


def _model_view(verdict: Verdict | None, model_slot: str) -> str | None:
    """A verdict as seen by the model, whose answer sat in `model_slot` ("a" or "b")."""
    if verdict is None:
        return None
    if verdict == "tie":
        return "tie"
    return "win" if verdict == model_slot else "loss"


def combine(first: str | None, second: str | None) -> Outcome:
    """The row outcome from the model's two views (order 1, order 2): agreement decides, anything else ties."""
    if first is None or second is None:
        return "failed"
    if first == second and first in ("win", "loss"):
        return first  # type: ignore[return-value]
    return "tie"


def _verdict(reply: Any) -> tuple[Verdict | None, str, str | None, dict[str, Any]]:
    """(winner, rationale, error, usage) from one compare reply; an unknown winner is a failure, not a guess."""
    if not isinstance(reply, dict):
        return None, "", f"judge returned {type(reply).__name__}, not a dict", {}
    winner, usage = reply.get("winner"), reply.get("usage") or {}
    rationale = str(reply.get("rationale") or "")
    if winner is None:
        return None, rationale, str(reply.get("error") or "judge gave no verdict"), usage
    normalised = winner.strip().lower() if isinstance(winner, str) else None
    if normalised not in _VERDICTS:
        return None, rationale, f"judge returned an unknown winner {winner!r}", usage
    return normalised, rationale, None, usage  # type: ignore[return-value]


async def _run_bounded(calls: list[tuple[Any, ...]], judge: PairwiseJudge, max_pending: int,
                       progress: bool, desc: str) -> list[Any]:
    """judge.compare(*args) for every args tuple, at most max_pending coroutines alive at once, results in
    order. A worker pool rather than one gather over all calls keeps 20k-request runs from holding 20k tasks."""
    results: list[Any] = [None] * len(calls)
    next_index = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(calls), desc=desc, unit="req")

    async def worker() -> None:
        nonlocal next_index
        while next_index < len(calls):  # no await between the check and the claim: claims never collide
            i = next_index
            next_index += 1
            results[i] = await judge.compare(*calls[i])
            if bar is not None:
                bar.update(1)

    tasks = [asyncio.ensure_future(worker()) for _ in range(max(1, min(max_pending, len(calls))))]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        # A bug (not a failed request: compare returns those) in one call: stop the others instead of leaking
        # them into the caller's loop.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    return results


async def compare_models(
    judge: PairwiseJudge,
    rows: Sequence[PairRow],
    *,
    model: str = "model",
    baseline: str = "baseline",
    max_pending: int = 256,
    progress: bool = False,
) -> PairwiseResult:
    """Judge every row in both answer orders and combine the verdicts (rules in the module docstring).

    model / baseline: names for the report. max_pending: compare calls alive at once (the judge's client
    bounds the HTTP requests in flight below that).
    """
    if max_pending < 1:
        raise ValueError(f"max_pending must be >= 1, got {max_pending}")
    calls: list[tuple[Any, ...]] = []
    for row in rows:
        prompt = row.prompt if isinstance(row.prompt, str) else list(row.prompt)
        calls.append((prompt, row.answer, row.baseline, row.reference))  # order 1: model is A
        calls.append((prompt, row.baseline, row.answer, row.reference))  # order 2: model is B
    replies = await _run_bounded(calls, judge, max_pending, progress, f"pairwise {model} vs {baseline}")

    usage: dict[str, float] = {}
    outcomes: list[RowOutcome] = []
    for i, row in enumerate(rows):
        (v1, r1, e1, u1), (v2, r2, e2, u2) = _verdict(replies[2 * i]), _verdict(replies[2 * i + 1])
        for part in (u1, u2):
            for key, value in part.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    usage[key] = usage.get(key, 0) + value
        views = (_model_view(v1, "a"), _model_view(v2, "b"))
        outcomes.append(RowOutcome(index=i, outcome=combine(*views), verdicts=(v1, v2), views=views,
                                   rationales=(r1, r2), errors=(e1, e2), id=row.id))
    return PairwiseResult(outcomes, model=model, baseline=baseline, usage=usage)


def compare_models_sync(judge: PairwiseJudge, rows: Sequence[PairRow], **kwargs: Any) -> PairwiseResult:
    """`compare_models` from synchronous code (a script, an eval stage); same keyword arguments."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(compare_models(judge, rows, **kwargs))
    raise RuntimeError("compare_models_sync called inside a running event loop; await compare_models(...) instead")


__all__ = ["PairRow", "RowOutcome", "PairwiseResult", "PairwiseJudge", "combine", "compare_models",
           "compare_models_sync"]
