"""Pacing: an asyncio token bucket for requests- and tokens-per-minute limits, and retry delays.

Providers enforce per-minute quotas but also reject bursts well inside the minute, so the bucket holds at most
`burst_s` seconds' worth of tokens: a job that starts 10,000 requests at once sends the first second's share
and then flows at the rate, instead of spending a whole minute's quota in the first instant and collecting 429s.
Over any window of W seconds at most `capacity + rate * W` tokens are taken.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from typing import Any, Awaitable, Callable

# Tokens a request may be short and still go: refills add rate * elapsed in floats, so a level can end 1e-14
# below what was waited for, and the next sleep (1e-17 s) would not move a coarse clock: a busy loop.
_ROUNDING = 1e-9


class TokenBucket:
    """Tokens refill continuously at `rate_per_s` up to `capacity`; `acquire(n)` waits until it may take n.

    A request larger than the whole bucket (a long prompt under a small tokens-per-minute limit) waits for a full
    bucket and then drives the level negative, so it is neither refused nor starved, and the debt delays the
    requests after it: the long-run rate still holds. `adjust` corrects an estimate once the real cost is known.
    Waiters are served first come, first served (asyncio.Lock is fair), so no request starves behind later ones.
    The bucket belongs to the event loop it is first awaited on. `clock` and `sleep` are injectable so the pacing
    can be checked exactly, on a fake clock, without spending wall time.
    """

    def __init__(
        self,
        rate_per_s: float,
        capacity: float | None = None,
        *,
        burst_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be positive, got {rate_per_s}")
        self.rate = float(rate_per_s)
        # At least one whole request must fit, or a very low rate could never admit anything.
        self.capacity = float(capacity) if capacity is not None else max(1.0, self.rate * burst_s)
        self._clock, self._sleep = clock, sleep
        self._level = self.capacity
        self._last = clock()
        self._lock: asyncio.Lock | None = None

    @classmethod
    def per_minute(cls, per_minute: float, *, burst_s: float = 1.0) -> "TokenBucket":
        """A bucket for a limit stated per minute, as provider quotas are."""
        return cls(per_minute / 60.0, burst_s=burst_s)

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._last) * self.rate)
        self._last = now

    @property
    def level(self) -> float:
        """Tokens available now (negative while paying off a debt)."""
        self._refill()
        return self._level

    async def acquire(self, n: float = 1.0) -> float:
        """Wait until n tokens may be taken, take them, and return the seconds spent waiting."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        start = self._clock()
        async with self._lock:
            need = min(n, self.capacity)
            while True:
                self._refill()
                if self._level >= need - _ROUNDING:
                    self._level -= n
                    return self._clock() - start
                await self._sleep((need - self._level) / self.rate)

    def adjust(self, delta: float) -> None:
        """Take `delta` more tokens (or give back -delta) after an estimate turned out wrong."""
        self._refill()
        self._level = min(self.capacity, self._level - delta)


# Honour the server's wait, but a broken header must not park a job for hours.
MAX_RETRY_AFTER_S = 600.0


def backoff_delay(attempt: int, base_s: float, max_s: float, retry_after: float | None = None) -> float:
    """Seconds before retry number attempt+1: full jitter, uniform(0, min(max_s, base_s * 2**attempt)),
    never less than the server's Retry-After. Full jitter spreads the many requests that failed together
    (one overloaded moment) over the whole window, so they do not return as one wave."""
    delay = random.uniform(0.0, min(max_s, base_s * 2**attempt))
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER_S))
    return delay


def retry_after_s(headers: Any) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `Retry-After` as seconds or an HTTP date; None if absent."""
    try:
        if ms := headers.get("retry-after-ms"):
            return max(0.0, float(ms) / 1000)
        value = headers.get("retry-after")
        if not value:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


def estimate_tokens(messages: list[dict[str, Any]], max_completion_tokens: int | None = None) -> float:
    """Tokens a request will cost, guessed before sending: Chinese runs about two characters per token, plus a
    few per message for the chat template, plus the completion budget when one is set. A tokens-per-minute
    bucket is corrected with the reported usage afterwards, so this only has to be roughly right."""
    chars = sum(len(str(m.get("content", ""))) for m in messages)
    return chars / 2 + 4 * len(messages) + (max_completion_tokens or 0)
