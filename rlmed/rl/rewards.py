"""What the RL trainers need around a reward source: counting unscored samples, and trl's reward signature.

A source returns None (with an error) for a sample it could not score. The trainers leave such samples out of
the update, count them here (per rank; the caller sums the ranks) and stop once more than
`max_failed_fraction` of the run's samples went unscored, so a broken judge ends a run instead of silently
training on a fraction of it. Library code: nothing here knows about stages.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def check_max_failed_fraction(value: float) -> None:
    """The one check of the `max_failed_fraction` setting, shared by every stage that declares it."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"max_failed_fraction must be within 0..1, got {value}")


def over_limit(total: int, unscored: int, max_failed_fraction: float) -> bool:
    """Whether `unscored` of `total` (run-wide counts) is more than the allowed fraction."""
    return bool(total) and unscored / total > max_failed_fraction


class RewardCounter:
    """Counts what a reward source returned in this process over the run, so unscored samples are reported, not
    hidden (the caller adds the ranks' counts up)."""

    def __init__(self) -> None:
        self.total = 0
        self.unscored = 0
        self.first_errors: list[str] = []

    def add(self, scores: list[Any]) -> None:
        self.total += len(scores)
        for score in scores:
            if score.value is None:
                self.unscored += 1
                if len(self.first_errors) < 5:
                    self.first_errors.append(score.error or "no reason given")


def trl_reward(source: Any, name: str, counter: RewardCounter) -> Any:
    """An async function with trl's reward signature, scoring through `source` (one float or None each)."""
    from reward.base import Sample

    async def reward(prompts: list[Any], completions: list[Any], reference: list[Any] | None = None,
                     metadata: list[str] | None = None, **_: Any) -> list[float | None]:
        samples = []
        for i, (prompt, completion) in enumerate(zip(prompts, completions)):
            messages = list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            text = completion[-1]["content"] if isinstance(completion, list) else completion
            # The candidates of one prompt share a group, so a listwise judge ranks them together.
            group = hashlib.sha256(json.dumps(messages, ensure_ascii=False).encode()).hexdigest()[:16]
            # A row's own rubric and prompt_id, as JSON text (rlmed.stages.online_common).
            meta = json.loads(metadata[i]) if metadata is not None and metadata[i] else {}
            samples.append(Sample(prompt=messages, completion=text, reference=reference[i] if reference is not None
                                  else None, group=group, metadata=meta))
        scores = await source.score(samples)
        counter.add(scores)
        return [s.value for s in scores]

    reward.__name__ = name  # trl logs rewards/<name>/mean
    return reward


class UnscoredGate:
    """Sums `counter` over ranks and stops the run once more than `max_failed_fraction` went unscored.

    Called on every rank at the same point (after each reward call), so every rank sees the run's counts and
    all fail together instead of one rank stopping while the others wait on it in a collective.
    """

    def __init__(self, counter: RewardCounter, max_failed_fraction: float):
        self.counter = counter
        self.max_failed_fraction = max_failed_fraction
        self.run_counts = (0, 0)  # (total, unscored) over all ranks, as of the last check

    def __call__(self) -> None:
        from rlmed import dist

        total, unscored = (int(n) for n in dist.all_sum([self.counter.total, self.counter.unscored]))
        self.run_counts = (total, unscored)
        if over_limit(total, unscored, self.max_failed_fraction):
            raise RuntimeError(f"{unscored} of {total} rewards could not be scored over {dist.world_size()} rank(s) "
                               f"(more than max_failed_fraction={self.max_failed_fraction}); on this rank "
                               f"{self.counter.unscored} of {self.counter.total}, first errors: "
                               f"{self.counter.first_errors or 'none'}")


def checked_after_rewards(trainer_cls: type, check: Any) -> type:
    """`trainer_cls` (trl's GRPOTrainer or RLOOTrainer) calling `check()` right after each reward call.

    trl calls reward functions on each rank inside `_calculate_rewards`, which then gathers them across ranks,
    so every rank reaches the check at the same point: the run stops at the first reward call past the limit,
    before that batch's update. An async reward function runs on trl's event-loop thread, where a collective
    could pick the wrong device, hence the hook on the method rather than inside the reward function.
    """
    if not callable(getattr(trainer_cls, "_calculate_rewards", None)):
        raise RuntimeError(f"{trainer_cls.__name__} has no _calculate_rewards (a trl version rlmed does not know), "
                           "so unscored rewards could not be checked as training goes")

    class Checked(trainer_cls):  # type: ignore[misc, valid-type]
        def _calculate_rewards(self, *args: Any, **kwargs: Any) -> Any:
            rewards = super()._calculate_rewards(*args, **kwargs)
            check()
            return rewards

    Checked.__name__ = Checked.__qualname__ = trainer_cls.__name__  # what trl writes into model cards and logs
    return Checked
