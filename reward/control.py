"""A control source: another source's scores, shuffled across the samples they were given.

A claim that a stage learned from its reward needs a control run in which the reward carries no information
about the samples but keeps its distribution (methods.md §10): the same stage trained on shuffled scores must
show no gain. `Shuffled` scores with the wrapped source, then permutes the whole Score objects (value, parts,
rationale together) over the samples that received a value; unscored samples keep their place, so failure counts
and gates behave as in the real run. Each call draws a new permutation from a seeded generator, so a control run
is reproducible.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

from reward.base import Sample, Score


class Shuffled:
    """source: a reward source (built, or a `{_component_: ...}` dict built by the recipe loader).
    seed: seeds the permutations (call k of one object uses the k-th draw)."""

    def __init__(self, source: Any, seed: int = 0) -> None:
        if not callable(getattr(source, "score", None)):
            raise TypeError(f"{source!r} is not a reward source (no score method)")
        self.source = source
        self.seed = seed
        self._rng = random.Random(seed)

    def __repr__(self) -> str:
        return f"Shuffled({self.source!r}, seed={self.seed})"

    def __getattr__(self, name: str) -> Any:
        # Accounting (a judge's `stats`, a reward model's settings) stays readable through the wrapper.
        if name in ("source", "seed", "_rng"):
            raise AttributeError(name)
        return getattr(self.source, name)

    async def score(self, samples: Sequence[Sample]) -> list[Score]:
        scores = list(await self.source.score(samples))
        if len(scores) != len(samples):
            raise RuntimeError(f"{self.source!r} returned {len(scores)} scores for {len(samples)} samples")
        scored = [i for i, s in enumerate(scores) if s.value is not None]
        order = list(scored)
        self._rng.shuffle(order)
        out = list(scores)
        for target, origin in zip(scored, order):
            out[target] = scores[origin]
        return out
