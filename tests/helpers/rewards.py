"""A user's own reward sources, used through a recipe's `reward:` block with no change to rlmed."""

from __future__ import annotations

from typing import Sequence

from reward.base import Sample, Score


class CharOverlap:
    """Share of the reference's characters that the answer contains; fails (None) on every n-th sample."""

    def __init__(self, fail_every: int = 0, scale: float = 1.0):
        self.fail_every = fail_every
        self.scale = scale
        self.calls = 0

    async def score(self, samples: Sequence[Sample]) -> list[Score]:
        scores = []
        for i, sample in enumerate(samples):
            self.calls += 1
            if self.fail_every and (i + 1) % self.fail_every == 0:
                scores.append(Score.failed("deliberately unscored"))
                continue
            reference = set(sample.reference or "")
            hit = len(reference & set(sample.completion)) / max(1, len(reference))
            scores.append(Score(value=self.scale * hit, parts={"overlap": hit}, rationale="chars in common"))
        return scores


class Brevity:
    """Shorter answers score higher (a learnable reward that varies from the first rollout); `shuffle` scores
    a random permutation of the lengths instead, as a control that carries no signal."""

    def __init__(self, shuffle: bool = False, seed: int = 0):
        import random

        self.shuffle = shuffle
        self.rng = random.Random(seed)

    async def score(self, samples: Sequence[Sample]) -> list[Score]:
        values = [-len(s.completion) / 50.0 for s in samples]
        if self.shuffle:
            self.rng.shuffle(values)
        return [Score(value=v) for v in values]


class UnscoredOnRank:
    """Brevity's reward, except in the process whose RANK is `rank`: every sample scored there comes back
    unscored (None), as when one rank's judge endpoint is down. For checking that unscored counts add up
    across ranks."""

    def __init__(self, rank: int = 1):
        self.rank = rank

    async def score(self, samples: Sequence[Sample]) -> list[Score]:
        import os

        if int(os.environ.get("RANK", "0")) == self.rank:
            return [Score.failed(f"deliberately unscored on rank {self.rank}") for _ in samples]
        return [Score(value=-len(s.completion) / 50.0) for s in samples]
