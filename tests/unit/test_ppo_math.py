"""PPO math against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from rlmed.rl.ppo_math import (
    AdaptiveKL, FixedKL, entropy_from_logits, gae, kl_estimate, masked_mean, policy_loss, token_rewards, value_loss,
    whiten,
)

MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


def test_masked_mean_ignores_padding():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0]])
    assert masked_mean(x, MASK).item() == pytest.approx(15 / 5)
    assert masked_mean(x, MASK, dim=1).tolist() == pytest.approx([2.0, 4.5])


def test_whiten_has_zero_mean_unit_variance_on_masked_positions_and_zero_padding():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0]])
    w = whiten(x, MASK)
    assert masked_mean(w, MASK).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_mean(w ** 2, MASK).item() == pytest.approx(1.0, abs=1e-5)
    assert w[1, 2].item() == 0.0
    kept = whiten(x, MASK, shift_mean=False)
    assert masked_mean(kept, MASK).item() == pytest.approx(3.0, abs=1e-5)


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(math.log(2))
    # k3: r = 0.25/0.5 = 0.5 -> (0.5 - 1) - log 0.5 = -0.5 + 0.6931
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx(-0.5 + math.log(2))
    assert kl_estimate(ref, logp, "k3").item() >= 0  # k3 never negative
    with pytest.raises(ValueError):
        kl_estimate(logp, ref, "k2")


def test_token_rewards_put_score_on_the_last_token_and_kl_everywhere():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 9.0]])
    rewards = token_rewards(torch.tensor([1.0, 2.0]), kl, MASK, beta=0.5,
                            missing_eos=torch.tensor([False, True]), missing_eos_penalty=1.0)
    expected = torch.tensor([[-0.05, -0.10, -0.15 + 1.0], [-0.20, -0.25 + (2.0 - 1.0), 0.0]])
    assert torch.allclose(rewards, expected)


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    mask = torch.ones(1, 3)
    gamma, lam = 0.9, 0.8
    # δ2 = 1 - 0.7 = 0.3; δ1 = 0 + .9*.7 - .6 = 0.03; δ0 = 0 + .9*.6 - .5 = 0.04
    a2 = 0.3
    a1 = 0.03 + gamma * lam * a2
    a0 = 0.04 + gamma * lam * a1
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    assert advantages[0].tolist() == pytest.approx([a0, a1, a2])
    assert returns[0].tolist() == pytest.approx([a0 + 0.5, a1 + 0.6, a2 + 0.7])


def test_gae_treats_padding_as_the_end():
    rewards = torch.tensor([[0.0, 1.0, 5.0]])
    values = torch.tensor([[0.2, 0.4, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert advantages[0].tolist() == pytest.approx([1.0 - 0.2, 1.0 - 0.4, 0.0])
    assert returns[0, 2].item() == 0.0


def test_policy_loss_clips_and_reports():
    logp = torch.tensor([[math.log(1.5), math.log(0.5)]])
    old = torch.zeros(1, 2)
    adv = torch.tensor([[1.0, -1.0]])
    out = policy_loss(logp, old, adv, torch.ones(1, 2), clip=0.2)
    # token 0: ratio 1.5, A=1: max(-1.5, -1.2) = -1.2 (clipped); token 1: ratio .5, A=-1: max(.5, .8) = .8 (clipped)
    assert out.loss.item() == pytest.approx((-1.2 + 0.8) / 2)
    assert out.clip_fraction.item() == pytest.approx(1.0)
    assert out.approx_kl.item() == pytest.approx(((0.5 - math.log(1.5)) + (-0.5 - math.log(0.5))) / 2)
    inside = policy_loss(torch.full((1, 2), math.log(1.1)), old, adv, torch.ones(1, 2), clip=0.2)
    assert inside.clip_fraction.item() == 0.0 and inside.loss.item() == pytest.approx(0.0, abs=1e-6)


def test_value_loss_clipped_by_hand():
    values, old, returns = torch.tensor([[2.0]]), torch.tensor([[1.0]]), torch.tensor([[3.0]])
    loss, clipped_share = value_loss(values, old, returns, torch.ones(1, 1), clip=0.5)
    # unclipped (2-3)^2 = 1; clipped V = 1.5 -> (1.5-3)^2 = 2.25; max = 2.25
    assert loss.item() == pytest.approx(0.5 * 2.25) and clipped_share.item() == 1.0


def test_entropy_of_uniform_and_certain_distributions():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]]])
    assert entropy_from_logits(logits)[0].tolist() == pytest.approx([math.log(4), 0.0], abs=1e-6)


def test_kl_controllers():
    fixed = FixedKL(0.05)
    fixed.update(10.0, 64)
    assert fixed.beta == 0.05
    adaptive = AdaptiveKL(0.1, target=6.0, horizon=10_000)
    adaptive.update(12.0, 1000)  # error clipped to +0.2: β·(1 + 0.2·0.1)
    assert adaptive.beta == pytest.approx(0.1 * 1.02)
    adaptive.update(3.0, 1000)  # error -0.5 clipped to -0.2
    assert adaptive.beta == pytest.approx(0.1 * 1.02 * 0.98)
    restored = AdaptiveKL(0.5, 6.0, 10_000)
    restored.load_state_dict(adaptive.state_dict())
    assert restored.beta == adaptive.beta
