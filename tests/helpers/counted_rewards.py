"""A reward source that records each call it gets, so a test can tell how far a stage ran before it stopped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from reward.base import Sample, Score
from tests.helpers.rewards import CharOverlap


class CountedOverlap(CharOverlap):
    """CharOverlap (every `fail_every`-th sample of a call unscored) that appends one line per call to `log`:
    the number of samples and how many came back unscored."""

    def __init__(self, log: str, fail_every: int = 0):
        super().__init__(fail_every=fail_every)
        self.log = Path(log)

    async def score(self, samples: Sequence[Sample]) -> list[Score]:
        scores = await super().score(samples)
        with self.log.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"samples": len(scores), "unscored": sum(s.value is None for s in scores)}) + "\n")
        return scores


def calls(log: Path) -> list[dict]:
    """The calls `CountedOverlap` recorded in `log` (none when it was never called)."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
