"""DPO and DFPO losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from rlmed.rl.dpo_math import chosen_nll, dfpo, dpo_sigmoid

# Two pairs whose chosen answers have 2 and 4 tokens (padding after the first).
CHOSEN_TOKENS = torch.tensor([[-1.0, -3.0, 0.0, 0.0], [-2.0, -2.0, -2.0, -6.0]])
CHOSEN_MASK = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])


def test_chosen_nll_is_normalised_by_each_answers_own_length():
    # pair 1: (1 + 3) / 2 = 2.0; pair 2: (2 + 2 + 2 + 6) / 4 = 3.0
    assert chosen_nll(CHOSEN_TOKENS, CHOSEN_MASK).tolist() == [2.0, 3.0]
    # Not the token mean over the batch (16 / 6), which weighs the longer answer more.
    assert chosen_nll(CHOSEN_TOKENS, CHOSEN_MASK).mean().item() == pytest.approx(2.5)
    assert 16 / 6 != pytest.approx(2.5)


def test_dpo_sigmoid_by_hand():
    # margin = (-4 - -5) - (-12 - -10) = 1 + 2 = 3; loss = -log σ(0.1 · 3) = log(1 + e^-0.3)
    loss = dpo_sigmoid(torch.tensor([-4.0]), torch.tensor([-12.0]), torch.tensor([-5.0]), torch.tensor([-10.0]), 0.1)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.3)), rel=1e-6)


def test_dfpo_adds_the_weighted_nll_per_pair_and_is_dpo_at_mu_zero():
    dpo = torch.tensor([0.5, 0.7])
    assert dfpo(dpo, CHOSEN_TOKENS, CHOSEN_MASK, nll_weight=0.0).item() == pytest.approx(0.6)
    # mean(0.5 + 0.1·2.0, 0.7 + 0.1·3.0) = mean(0.7, 1.0) = 0.85
    assert dfpo(dpo, CHOSEN_TOKENS, CHOSEN_MASK, nll_weight=0.1).item() == pytest.approx(0.85)


def test_dfpo_gradient_reaches_only_answer_tokens():
    tokens = CHOSEN_TOKENS.clone().requires_grad_(True)
    dfpo(torch.zeros(2), tokens, CHOSEN_MASK, nll_weight=1.0).backward()
    # d/dlogp of mean_b(-(1/|y_b|) Σ logp): -1/(2·2) on pair 1's tokens, -1/(2·4) on pair 2's, 0 on padding
    assert tokens.grad.tolist() == [[-0.25, -0.25, 0.0, 0.0], [-0.125, -0.125, -0.125, -0.125]]
