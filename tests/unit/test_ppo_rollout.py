"""PPO's settings and schedule (rlmed.rl.ppo_config) and a rollout's parts (rlmed.rl.rollout), on hand-made
inputs: no model, no Trainer."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from reward.base import Score
from rlmed.rl.ppo_config import PPOSettings
from rlmed.rl.rewards import RewardCounter, UnscoredGate, over_limit
from rlmed.rl.rollout import (
    Scored, advantages, minibatch_plan, rollout_stats, rollout_totals, sample_rows, score_samples,
)

# The ppo stage's `args:` keys before PPOSettings existed: the recipe keys must not change.
PPO_RECIPE_KEYS = [
    "dtype", "lora", "merge", "attn_implementation", "max_prompts", "heldout_prompts", "heldout_max_new_tokens",
    "max_failed_fraction", "num_rollouts", "rollout_batch_size", "ppo_epochs", "generation_batch_size",
    "max_prompt_length", "max_new_tokens", "temperature", "top_p", "kl_coef", "kl_estimator", "kl_target",
    "kl_horizon", "gamma", "lam", "cliprange", "cliprange_value", "vf_coef", "missing_eos_penalty",
    "save_every_rollouts", "samples_logged",
]


# --- settings and schedule ------------------------------------------------------------------------------------
def test_schedule_maps_a_rollout_onto_trainer_steps():
    settings = PPOSettings(num_rollouts=3, rollout_batch_size=16, ppo_epochs=2, save_every_rollouts=2)
    s = settings.schedule(micro_batch=4, accumulation=2)
    # 2 epochs × 16 rows = 32 rows of minibatches: 8 micro-steps of 4, i.e. 4 optimizer steps of 2 micro-steps.
    assert (s.micro_batch, s.accumulation, s.micro_steps, s.optimizer_steps) == (4, 2, 8, 4)
    assert (s.max_steps, s.save_steps) == (12, 8)


@pytest.mark.parametrize("micro, accumulation", [(8, 1), (4, 2), (5, 1)])
def test_schedule_refuses_a_rollout_that_does_not_split_into_whole_optimizer_steps(micro, accumulation):
    message = rf"args.rollout_batch_size=12 must be a multiple of .* = {micro * accumulation}$"
    with pytest.raises(ValueError, match=message):
        PPOSettings(rollout_batch_size=12).schedule(micro, accumulation)


@pytest.mark.parametrize("change, message", [
    ({"ppo_epochs": 0}, "ppo_epochs must be at least 1, got 0"),
    ({"kl_target": -1.0}, "kl_target must be above 0 .*got -1.0"),
    ({"gamma": 0.0}, "gamma must be within .*got gamma=0.0"),
    ({"temperature": 0.0}, "temperature must be above 0, got 0.0"),
    ({"max_failed_fraction": 1.5}, "max_failed_fraction must be within 0..1, got 1.5"),
])
def test_settings_name_the_value_they_refuse(change, message):
    with pytest.raises(ValueError, match=message):
        PPOSettings(**change)


def test_the_ppo_stage_args_are_the_settings_plus_the_online_stage_args():
    from rlmed.stages.ppo import Args

    assert [f.name for f in dataclasses.fields(Args)] == PPO_RECIPE_KEYS
    assert issubclass(Args, PPOSettings)
    with pytest.raises(ValueError, match="merge: true needs a lora block"):  # the model args' checks still run
        Args(merge=True)
    with pytest.raises(ValueError, match="num_rollouts must be at least 1"):  # and the settings' own
        Args(num_rollouts=0)


# --- scoring --------------------------------------------------------------------------------------------------
class Fixed:
    """Returns the given scores whatever it is asked."""

    def __init__(self, scores: list[Score]):
        self.scores = scores
        self.seen: list = []

    async def score(self, samples):
        self.seen += list(samples)
        return self.scores


ROWS = [{"messages": [{"role": "user", "content": f"q{i}"}], "reference": f"r{i}"} for i in range(3)]


def test_score_samples_marks_unscored_samples_and_zeroes_their_value():
    source = Fixed([Score(0.5), Score.failed("down"), Score(-1.0)])
    scored = score_samples(source, ROWS, ["a0", "a1", "a2"])
    assert scored.valid.tolist() == [True, False, True]
    assert scored.value.tolist() == [0.5, 0.0, -1.0]
    assert [(s.completion, s.reference) for s in source.seen] == [("a0", "r0"), ("a1", "r1"), ("a2", "r2")]


def test_score_samples_refuses_a_source_that_returns_the_wrong_number_of_scores():
    with pytest.raises(RuntimeError, match="returned 1 scores for 3 samples"):
        score_samples(Fixed([Score(1.0)]), ROWS, ["a", "b", "c"])


def scored(values: list[float | None], parts: list[dict] | None = None) -> Scored:
    scores = [Score(v, parts=(parts or [{}] * len(values))[i]) if v is not None else Score.failed("x")
              for i, v in enumerate(values)]
    return Scored(scores=scores, valid=torch.tensor([v is not None for v in values]),
                  value=torch.tensor([v if v is not None else 0.0 for v in values]))


# --- the experience's math ------------------------------------------------------------------------------------
def test_unscored_samples_get_no_loss_mask_and_no_advantage():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])
    zeros = torch.zeros(3, 3)
    adv = advantages(scored([1.0, None, -1.0]), zeros, zeros, zeros, mask, torch.tensor([False, False, True]),
                     beta=0.1, settings=PPOSettings())
    assert adv.loss_mask.tolist() == [[1, 1, 0], [0, 0, 0], [1, 0, 0]]
    assert adv.advantages[1].abs().sum() == 0 and adv.kl.abs().sum() == 0  # log-probs equal: no KL
    # Whitened over the scored tokens only: the better answer's tokens get the larger advantages.
    assert adv.advantages[0, 0] > 0 > adv.advantages[2, 0]


def test_minibatch_plan_covers_every_row_once_per_epoch_in_micro_batches():
    torch.manual_seed(0)
    plan = minibatch_plan(n_rows=8, epochs=2, micro_batch=4)
    assert [len(p) for p in plan] == [4, 4, 4, 4]
    for epoch in (plan[:2], plan[2:]):
        assert sorted(torch.cat(epoch).tolist()) == list(range(8))


# --- totals and statistics ------------------------------------------------------------------------------------
def test_totals_and_stats_average_over_scored_samples_and_ranks():
    batch = scored([1.0, None, 3.0], parts=[{"overlap": 0.5}, {}, {"overlap": 1.0}])
    kl = torch.tensor([[0.1, 0.1], [0.2, 0.0], [0.3, 0.0]])
    mask = torch.tensor([[1, 1], [1, 0], [1, 0]])
    totals = rollout_totals(batch, kl, mask, torch.tensor([True, False, False]),
                            {"time_generation": 2.0, "time_scoring": 1.0, "time_experience": 0.5})
    assert totals.sums["samples"] == 3 and totals.sums["scored"] == 2
    assert totals.sums["reward_sum"] == 4.0 and totals.sums["reward_sq_sum"] == 10.0
    assert totals.sums["length_sum"] == 4 and totals.sums["missing_eos"] == 1
    assert totals.sums["part_n/overlap"] == 2.0

    # As if a second rank had sent identical sums (all_sum) and both had trained 4 micro-steps.
    summed = {k: 2 * v for k, v in totals.sums.items()}
    summed.update(micro_steps=8.0, time_training=6.0, ratio_error=2e-7, **{
        key: 8 * 0.5 for key in ("policy_loss", "value_loss", "clip_fraction", "approx_kl", "value_clip_fraction",
                                 "entropy")})
    stats = rollout_stats(summed, rollout=0, run_unscored=2, world=2, kl_coef=0.05)
    assert stats["rollout"] == 1 and stats["unscored"] == 2 and stats["unscored_total"] == 2
    assert stats["reward_mean"] == pytest.approx(2.0)  # (1 + 3) / 2: the unscored sample is left out
    assert stats["reward_std"] == pytest.approx(1.0)
    assert stats["kl"] == pytest.approx(1.4 / 6) and stats["response_length"] == pytest.approx(8 / 6)
    assert stats["missing_eos_fraction"] == pytest.approx(2 / 6)
    assert stats["policy_loss"] == pytest.approx(0.5)
    assert stats["time_generation"] == 2.0 and stats["time_training"] == 3.0  # means over ranks
    assert stats["ratio_error_before_update"] == pytest.approx(1e-7)
    assert stats["reward_part/overlap"] == pytest.approx(0.75)
    assert stats["kl_coef"] == 0.05


def test_sample_rows_keep_the_first_answers_with_their_reward_or_error():
    rows = sample_rows(ROWS, ["a0", "a1", "a2"], [Score(0.5, rationale="ok"), Score.failed("down"), Score(1.0)], 2)
    assert rows == [{"prompt": "q0", "response": "a0", "reference": "r0", "reward": 0.5, "rationale": "ok"},
                    {"prompt": "q1", "response": "a1", "reference": "r1", "reward": None, "rationale": "down"}]


# --- unscored counts ------------------------------------------------------------------------------------------
def test_the_unscored_gate_counts_the_run_and_stops_past_the_fraction():
    counter = RewardCounter()
    gate = UnscoredGate(counter, max_failed_fraction=0.3)
    counter.add([Score(1.0), Score(1.0), Score(1.0), Score.failed("down")])
    gate()  # 1 of 4 is within 0.3
    assert gate.run_counts == (4, 1)
    counter.add([Score.failed("down"), Score(1.0)])
    with pytest.raises(RuntimeError, match=r"2 of 6 rewards could not be scored .*max_failed_fraction=0.3.*down"):
        gate()
    assert not over_limit(0, 0, 0.0) and over_limit(10, 1, 0.0) and not over_limit(10, 3, 0.3)
