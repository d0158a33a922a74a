"""PPO's math as pure functions (methods.md §4), testable without a model.

Shapes: B sequences (responses) of T tokens, left-aligned; `mask` [B, T] is 1 on response tokens and 0 on
padding after the response ends. Per-token log-probabilities are of the tokens actually generated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over positions where mask is 1 (all of them, or along `dim`)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over masked positions; with shift_mean=False the mean is added back (rewards keep
    their sign). Padding positions come out as 0."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(π_θ || π_ref) from samples of π_θ.  [B, T] -> [B, T]

    k1 = log π_θ - log π_ref: unbiased, can be negative per token.
    k3 = (r - 1) - log r with r = π_ref / π_θ: unbiased and always >= 0, lower variance (Schulman's k3).
    """
    log_ratio = logp - ref_logp
    if kind == "k1":
        return log_ratio
    if kind == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator '{kind}' (k1 or k3)")


def token_rewards(score: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float,
                  missing_eos: torch.Tensor | None = None, missing_eos_penalty: float = 0.0) -> torch.Tensor:
    """Per-token rewards: -β·KL_t on every response token, plus the sequence score on its last token.

    score [B], kl [B, T], mask [B, T], missing_eos [B] bool (responses cut at max length) -> rewards [B, T].
    A response without EOS has `missing_eos_penalty` subtracted from its score.
    """
    rewards = -beta * kl * mask
    if missing_eos is not None and missing_eos_penalty:
        score = score - missing_eos_penalty * missing_eos.to(score.dtype)
    last = mask.sum(dim=1).long().clamp(min=1) - 1  # index of each response's last token
    rewards[torch.arange(rewards.shape[0]), last] += score
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation. rewards, values, mask [B, T] -> advantages, returns [B, T].

    δ_t = r_t + γ·V_{t+1} - V_t (V after the last response token is 0), A_t = δ_t + γλ·A_{t+1};
    returns = A + V are the value targets.
    """
    values = values * mask
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    next_value = torch.zeros_like(next_advantage)
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    return advantages, (advantages + values) * mask


@dataclass
class PolicyLoss:
    loss: torch.Tensor
    clip_fraction: torch.Tensor  # share of tokens where the clipped term was the one used
    approx_kl: torch.Tensor  # mean of ((r - 1) - log r), r = π_θ / π_old: how far this epoch moved


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip: float) -> PolicyLoss:
    """Clipped surrogate: mean over tokens of max(-A·r, -A·clip(r, 1-ε, 1+ε)), r = exp(logp - old_logp)."""
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_fraction = masked_mean((clipped > unclipped).to(logp.dtype), mask)
    approx_kl = masked_mean(torch.expm1(log_ratio) - log_ratio, mask)
    return PolicyLoss(loss, clip_fraction.detach(), approx_kl.detach())


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss: 0.5·mean(max((V - R)², (clip(V, V_old ± ε) - R)²)); also the clipped share."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    return loss, masked_mean((clipped > unclipped).to(values.dtype), mask).detach()


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-token entropy of the categorical distribution.  [B, T, V] -> [B, T]"""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


class FixedKL:
    """A constant KL coefficient β (HuatuoGPT: 0.05)."""

    def __init__(self, beta: float):
        self.beta = beta

    def update(self, observed_kl: float, n_samples: int) -> None:
        return None

    def state_dict(self) -> dict[str, float]:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.beta = state["beta"]


class AdaptiveKL(FixedKL):
    """Ziegler et al.'s proportional controller: β ← β·(1 + clip((KL - target)/target, ±0.2)·n/horizon)."""

    def __init__(self, beta: float, target: float, horizon: int):
        super().__init__(beta)
        self.target = target
        self.horizon = horizon

    def update(self, observed_kl: float, n_samples: int) -> None:
        error = max(-0.2, min(0.2, observed_kl / self.target - 1.0))
        self.beta *= 1.0 + error * n_samples / self.horizon
