"""The reward-source protocol: `await source.score(samples) -> scores`, one Score per Sample, in order.

The same object serves offline AI-feedback scoring, PPO/GRPO rewards and evaluation. A sample that could not be
scored gets `Score(value=None, ...)` with the reason in `error` — never a silent 0 — and callers leave it out
of their update and count it. This package imports nothing from rlmed, so a user can use it on its own, and a
user's own class that has an async `score` works wherever these do.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable


@dataclass(frozen=True)
class Sample:
    """One candidate answer to score.

    prompt: the dialogue so far, as chat messages [{"role", "content"}], ending with the user's turn.
    completion: the candidate answer text.
    reference: the real doctor's reply to the same prompt, or None when there is none.
    group: candidates of the same prompt share it, so a listwise judge can rank them together.
    """

    prompt: tuple[dict[str, str], ...] | list[dict[str, str]]
    completion: str
    reference: str | None = None
    group: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass
class Score:
    """value: the score (higher is better), or None when the sample could not be scored.
    parts: per-criterion or per-source scores; rationale: the judge's explanation; error: why value is None;
    usage: tokens, cost and the like, for accounting."""

    value: float | None
    parts: dict[str, float] = field(default_factory=dict)
    rationale: str = ""
    error: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def failed(cls, error: str, usage: dict[str, Any] | None = None) -> "Score":
        return cls(value=None, error=error, usage=usage or {})


@runtime_checkable
class RewardSource(Protocol):
    async def score(self, samples: Sequence[Sample]) -> list[Score]: ...


def score_sync(source: RewardSource, samples: Sequence[Sample]) -> list[Score]:
    """Run `source.score` from synchronous code (a training loop, a script)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(source.score(samples))
    raise RuntimeError("score_sync called inside a running event loop; await source.score(samples) instead")
