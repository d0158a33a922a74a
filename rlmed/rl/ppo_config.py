"""PPO's settings, typed and checked, and the rollout schedule they give a Trainer.

`PPOTrainer` takes a `PPOSettings`; the `ppo` stage's `Args` derive from it, so the recipe's `args:` keys are
these fields. `PPOSettings.schedule` is the one computation of a rollout's Trainer steps, used by the stage and
the trainer alike; what the numbers mean: docs/architecture.md, "PPO".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from rlmed.rl.rewards import check_max_failed_fraction

# Settings that must be at least 1 (counts and sizes).
POSITIVE = ("num_rollouts", "rollout_batch_size", "ppo_epochs", "generation_batch_size", "max_new_tokens",
            "save_every_rollouts", "max_prompt_length")


@dataclass(frozen=True)
class RolloutSchedule:
    """How one rollout maps onto the Trainer's loop on each rank."""

    micro_batch: int  # the Trainer's per_device_train_batch_size: rows per PPO minibatch
    accumulation: int  # the Trainer's gradient_accumulation_steps
    micro_steps: int  # PPO minibatches (the Trainer's micro-steps) per rollout: ppo_epochs × rollout / micro
    optimizer_steps: int  # the Trainer's (optimizer) steps per rollout
    max_steps: int  # the Trainer's max_steps: num_rollouts rollouts
    save_steps: int  # the Trainer's save_steps: a checkpoint every save_every_rollouts rollouts


@dataclass(kw_only=True)
class PPOSettings:
    num_rollouts: int = 20
    """Rollouts to train for (each: generate, score, then ppo_epochs passes of updates)."""
    rollout_batch_size: int = 16
    """Prompts per rank per rollout, one answer each; a multiple of micro-batch × gradient accumulation."""
    ppo_epochs: int = 2
    """Passes of minibatch updates over each rollout."""
    generation_batch_size: int = 16
    """Prompts generated for at once."""
    max_prompt_length: int = 256
    """Prompt tokens kept (the end of longer dialogues)."""
    max_new_tokens: int = 64
    """Longest answer sampled per prompt, in tokens."""
    temperature: float = 1.0
    """Rollouts sample softmax(logits / temperature), the distribution the log-probs are computed under; the
    model's generation_config.json (repetition_penalty, ...) is not applied (rlmed.sampling)."""
    top_p: float = 1.0
    """Below 1, samples are cut to the top-p mass while log-probs stay those of the whole distribution."""
    kl_coef: float = 0.05
    """KL penalty β per token, >= 0 (the starting value when kl_target is set); 0.05 as in trl's PPOConfig
    before trl dropped PPO."""
    kl_estimator: Literal["k1", "k3"] = "k1"
    """Per-token KL estimate: k1 = log π/π_ref, k3 = (r - 1) - log r, always ≥ 0."""
    kl_target: float | None = None
    """Adaptive KL: steer β so the per-answer KL approaches this (None: fixed β)."""
    kl_horizon: int = 10000
    """Adaptive KL's horizon, in samples: β moves by at most ±20% × samples/horizon per rollout (Ziegler et
    al.'s controller, rlmed.rl.ppo_math.AdaptiveKL); 10000 as in their code and trl's, so β drifts over many
    rollouts rather than chasing one. Unused with a fixed β."""
    gamma: float = 1.0
    """GAE discount over an answer's tokens, within (0, 1]; 1 (the usual choice for RLHF, as in trl) counts the
    end-of-answer score fully at every token, since an answer is judged as a whole."""
    lam: float = 0.95
    """GAE λ within [0, 1]: 1 gives Monte-Carlo returns (unbiased, noisy), 0 one-step TD targets (biased by the
    value model); 0.95, as in trl, leans on the returns while the value model is still poor."""
    cliprange: float = 0.2
    """PPO's policy ratio clip ε: a token's ratio π/π_old counts within [1-ε, 1+ε] only; 0.2 is the PPO
    paper's (Schulman et al., 2017) and trl's value."""
    cliprange_value: float = 0.2
    """The value model's clip, in reward units: new values count within ±this of the rollout's values, so one
    rollout cannot drag the value model far; 0.2 as in trl."""
    vf_coef: float = 0.1
    """Weight of the value loss against the policy loss (policy and value train in one backward); 0.1, as in
    trl, keeps the value loss from dominating the gradient norm the Trainer clips (max_grad_norm) for both."""
    missing_eos_penalty: float = 0.0
    """Subtracted from the score of an answer cut at max_new_tokens without EOS."""
    save_every_rollouts: int = 5
    """Rollouts between checkpoints (a killed run resumes from the last one)."""
    samples_logged: int = 4
    """Answers per rollout written to the samples table (tables/samples.jsonl and W&B)."""
    max_failed_fraction: float = 0.2
    """The run stops once more than this share of its samples went unscored (checked after each rollout)."""

    def __post_init__(self) -> None:
        # A dataclass deriving from this and another Args base (the ppo stage's) runs that base's checks first.
        parent: Any = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()
        check_max_failed_fraction(self.max_failed_fraction)
        for name in POSITIVE:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.kl_target is not None and self.kl_target <= 0:
            raise ValueError(f"kl_target must be above 0 (or null for a fixed kl_coef), got {self.kl_target}")
        if not (0 < self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ValueError(f"gamma must be within (0, 1] and lam within [0, 1], got gamma={self.gamma}, "
                             f"lam={self.lam}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be above 0, got {self.temperature}")

    def schedule(self, micro_batch: int, accumulation: int) -> RolloutSchedule:
        """The rollout's steps for a Trainer with this micro-batch and gradient accumulation, after checking that
        a rollout splits into whole optimizer steps (else the last minibatches would straddle two rollouts)."""
        if micro_batch < 1 or accumulation < 1:
            raise ValueError(f"trainer.per_device_train_batch_size ({micro_batch}) and gradient_accumulation_steps "
                             f"({accumulation}) must be at least 1")
        per_step = micro_batch * accumulation
        if self.rollout_batch_size % per_step:
            raise ValueError(f"args.rollout_batch_size={self.rollout_batch_size} must be a multiple of "
                             f"trainer.per_device_train_batch_size × gradient_accumulation_steps = {per_step}")
        optimizer_steps = self.ppo_epochs * self.rollout_batch_size // per_step
        return RolloutSchedule(micro_batch=micro_batch, accumulation=accumulation,
                               micro_steps=optimizer_steps * accumulation, optimizer_steps=optimizer_steps,
                               max_steps=self.num_rollouts * optimizer_steps,
                               save_steps=self.save_every_rollouts * optimizer_steps)
