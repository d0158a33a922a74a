"""The tensor plumbing between generation and PPO's math, and the rollout batch order, on hand-made inputs."""

from __future__ import annotations

import torch

from rlmed.rl.experience import left_pad, position_ids, response_mask, response_slice, token_logprobs
from rlmed.rl.ppo_trainer import RolloutBatches

EOS, PAD = 2, 0


def test_response_mask_ends_at_the_first_eos_and_flags_answers_without_one():
    responses = torch.tensor([[5, 6, EOS, PAD, PAD],
                              [5, EOS, 7, EOS, PAD],  # only the first EOS ends it
                              [5, 6, 7, 8, 9]])  # cut at the length limit
    mask, missing = response_mask(responses, EOS, PAD)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert missing.tolist() == [False, False, True]


def test_response_mask_when_pad_is_eos():
    responses = torch.tensor([[5, EOS, EOS, EOS], [EOS, EOS, EOS, EOS]])
    mask, missing = response_mask(responses, EOS, pad_id=EOS)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 0, 0, 0]]  # an immediate EOS is a one-token answer
    assert missing.tolist() == [False, False]


def test_without_eos_the_answer_stops_at_padding():
    mask, missing = response_mask(torch.tensor([[5, 6, PAD, PAD]]), EOS, PAD)
    assert mask.tolist() == [[1, 1, 0, 0]] and missing.tolist() == [True]


def test_left_pad_and_positions_count_real_tokens_only():
    ids, mask = left_pad([[7, 8, 9], [4]], PAD)
    assert ids.tolist() == [[7, 8, 9], [PAD, PAD, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    full_mask = torch.cat([mask, torch.tensor([[1, 0], [1, 1]])], dim=1)
    assert position_ids(full_mask).tolist() == [[0, 1, 2, 3, 3], [0, 0, 0, 1, 2]]


def test_token_logprobs_picks_the_generated_tokens_with_temperature():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]]))
    tokens = torch.tensor([[0, 2]])
    assert torch.allclose(token_logprobs(logits, tokens), torch.log(torch.tensor([[0.5, 0.8]])))
    # Temperature 2: probabilities ∝ p^(1/2).
    hot = torch.sqrt(torch.tensor([0.5, 0.25, 0.25]))
    expected = torch.log(hot[0] / hot.sum())
    assert torch.isclose(token_logprobs(logits, tokens, temperature=2.0)[0, 0], expected)


def test_response_slice_takes_the_outputs_that_predict_response_tokens():
    per_position = torch.arange(6).view(1, 6)  # prompt width 3, response width 3
    assert response_slice(per_position, 3).tolist() == [[2, 3, 4]]


def test_rollout_batches_give_ranks_disjoint_prompts_repeated_per_micro_step():
    kwargs = dict(n_prompts=10, per_rank=3, world=2, rollouts=3, repeats=2, seed=1)
    rank0, rank1 = list(RolloutBatches(rank=0, **kwargs)), list(RolloutBatches(rank=1, **kwargs))
    assert len(rank0) == len(RolloutBatches(rank=0, **kwargs)) == 6
    assert rank0[0] == rank0[1] and rank0[2] == rank0[3]  # one rollout's prompts, once per micro-step
    assert not set(rank0[0]) & set(rank1[0])  # ranks share no prompt within a rollout
    first_pass = rank0[0] + rank1[0] + rank0[2]  # 9 of the 10 prompts before any repeats
    assert len(set(first_pass)) == 9
    assert list(RolloutBatches(rank=0, **kwargs)) == rank0  # fixed by the seed: resume needs no state
    assert list(RolloutBatches(rank=0, **{**kwargs, "seed": 2})) != rank0
