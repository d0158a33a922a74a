"""The parts of a PPO rollout that need no Trainer and no model: scoring, the experience's math, the minibatch
plan, the rollout's totals and the statistics logged from them.

`PPOTrainer._rollout` runs them in order around its generation and forward passes; each takes plain values
and tensors, so each is tested on hand-made inputs (tests/unit/test_ppo_rollout.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from rlmed.rl import ppo_math


@dataclass
class Experience:
    """One rollout on this rank, ready for PPO epochs. Tensors are [B, P+T] (sequences) or [B, T] (response)."""

    sequences: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    responses: torch.Tensor
    prompt_width: int
    old_logp: torch.Tensor
    old_values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    loss_mask: torch.Tensor  # response tokens of samples that got a score
    plan: list[torch.Tensor] = field(default_factory=list)  # row indices of each micro-step's minibatch


@dataclass
class RolloutTotals:
    """Sums over the rollout on this rank, added across ranks before they are logged."""

    sums: dict[str, float] = field(default_factory=dict)

    def add(self, **values: float) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)

    def keep_max(self, key: str, value: float) -> None:
        self.sums[key] = max(self.sums.get(key, 0.0), float(value))


@dataclass
class Scored:
    """A rollout's scores as tensors: which samples got a score, and the score (0 where none)."""

    scores: list[Any]  # the source's Score objects, in sample order
    valid: torch.Tensor  # [B] bool
    value: torch.Tensor  # [B] float32


def score_samples(source: Any, rows: list[dict[str, Any]], texts: list[str]) -> Scored:
    """Score each answer with its prompt row's messages and reference; a source must return one score each."""
    from reward.base import Sample, score_sync

    samples = [Sample(prompt=r["messages"], completion=t, reference=r.get("reference"), metadata=r.get("metadata") or {})
               for r, t in zip(rows, texts)]
    scores = score_sync(source, samples)
    if len(scores) != len(samples):
        raise RuntimeError(f"reward source {type(source).__name__} returned {len(scores)} scores "
                           f"for {len(samples)} samples")
    return Scored(scores=scores, valid=torch.tensor([sc.value is not None for sc in scores]),
                  value=torch.tensor([sc.value if sc.value is not None else 0.0 for sc in scores],
                                     dtype=torch.float32))


@dataclass
class Advantages:
    kl: torch.Tensor  # [B, T] per-token KL estimate, 0 past each response
    advantages: torch.Tensor  # [B, T] whitened over the scored samples' tokens
    returns: torch.Tensor  # [B, T]
    loss_mask: torch.Tensor  # [B, T] response tokens of scored samples


def advantages(scored: Scored, old_logp: torch.Tensor, ref_logp: torch.Tensor, old_values: torch.Tensor,
               mask: torch.Tensor, missing_eos: torch.Tensor, beta: float, settings: Any) -> Advantages:
    """Per-token rewards (score minus β·KL), GAE and whitened advantages; `settings` is a PPOSettings."""
    mask_f = mask.float()
    loss_mask = mask_f * scored.valid.unsqueeze(1).float()  # unscored samples take no part in the update
    kl = ppo_math.kl_estimate(old_logp, ref_logp, settings.kl_estimator) * mask_f
    rewards = ppo_math.token_rewards(scored.value, kl, mask_f, beta, missing_eos, settings.missing_eos_penalty)
    adv, returns = ppo_math.gae(rewards, old_values, mask_f, settings.gamma, settings.lam)
    return Advantages(kl=kl, advantages=ppo_math.whiten(adv, loss_mask), returns=returns, loss_mask=loss_mask)


def minibatch_plan(n_rows: int, epochs: int, micro_batch: int) -> list[torch.Tensor]:
    """The row indices of each micro-step's minibatch: a fresh shuffle of the rollout per epoch (torch's RNG,
    which the Trainer's checkpoints restore)."""
    plan: list[torch.Tensor] = []
    for _ in range(epochs):
        plan += list(torch.randperm(n_rows).split(micro_batch))
    return plan


def rollout_totals(scored: Scored, kl: torch.Tensor, mask: torch.Tensor, missing_eos: torch.Tensor,
                   timings: dict[str, float]) -> RolloutTotals:
    """This rank's sums over the rollout (sums, not means, so that ranks add up before anything is divided)."""
    valid, score = scored.valid, scored.value
    totals = RolloutTotals()
    totals.add(samples=len(scored.scores), scored=int(valid.sum()), reward_sum=float((score * valid).sum()),
               reward_sq_sum=float((score ** 2 * valid).sum()), kl_sum=float(kl.sum()),
               length_sum=float(mask.sum(dim=1).float().sum()), missing_eos=float(missing_eos.sum()), **timings)
    for sc in scored.scores:
        for name, value in (sc.parts or {}).items():
            totals.add(**{f"part_sum/{name}": value, f"part_n/{name}": 1.0})
    return totals


def sample_rows(rows: list[dict[str, Any]], texts: list[str], scores: list[Any], n: int) -> list[dict[str, Any]]:
    """The first `n` samples as rows of the samples table."""
    return [{"prompt": r["messages"][-1]["content"], "response": t, "reference": r.get("reference"),
             "reward": sc.value, "rationale": sc.rationale or sc.error or ""}
            for r, t, sc in list(zip(rows, texts, scores))[:n]]


def rollout_stats(totals: dict[str, float], rollout: int, run_unscored: int, world: int,
                  kl_coef: float) -> dict[str, float]:
    """What is logged for a rollout, from its totals summed over the `world` ranks (`rollout` counts from 0)."""
    n, scored, micro = totals["samples"], max(totals["scored"], 1.0), max(totals["micro_steps"], 1.0)
    mean = totals["reward_sum"] / scored
    var = max(totals["reward_sq_sum"] / scored - mean ** 2, 0.0)
    stats = {
        "rollout": rollout + 1, "reward_mean": mean, "reward_std": var ** 0.5, "kl": totals["kl_sum"] / n,
        "kl_coef": kl_coef, "response_length": totals["length_sum"] / n,
        "missing_eos_fraction": totals["missing_eos"] / n, "unscored": n - totals["scored"],
        "unscored_total": run_unscored,
    }
    for key in ("policy_loss", "value_loss", "clip_fraction", "approx_kl", "value_clip_fraction", "entropy"):
        stats[key] = totals[key] / micro
    for key in ("time_generation", "time_scoring", "time_experience", "time_training"):
        stats[key] = totals[key] / world  # mean over ranks, seconds
    # Per rank the largest |π/π_old - 1| before the rollout's first optimizer step, averaged over ranks: 0 up
    # to float noise; more means the update's forward differs from the rollout's (dropout, kernels).
    stats["ratio_error_before_update"] = totals.get("ratio_error", 0.0) / world
    for key in totals:
        if key.startswith("part_sum/"):
            name = key.split("/", 1)[1]
            stats[f"reward_part/{name}"] = totals[key] / max(totals[f"part_n/{name}"], 1.0)
    return stats
