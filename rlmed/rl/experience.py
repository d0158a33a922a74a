"""Turning generated token ids into what PPO's math needs: response masks, positions and per-token log-probs.

Sequences are a left-padded prompt block of width P followed by the generated block: row i is
[pad…, prompt_i, response_i, pad…]. Everything here is a pure tensor function, testable without a model.
"""

from __future__ import annotations

import torch


def response_mask(responses: torch.Tensor, eos_id: int, pad_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask [B, T] of each response's tokens up to and including its first EOS, and a bool [B] marking
    responses with no EOS at all (cut at the length limit).

    Without an EOS the response runs to its last non-pad token, or to the end when pad is EOS or absent.
    """
    is_eos = responses == eos_id
    has_eos = is_eos.any(dim=1)
    positions = torch.arange(responses.shape[1], device=responses.device).expand_as(responses)
    first_eos = torch.where(has_eos, is_eos.float().argmax(dim=1), responses.shape[1])
    mask = positions <= first_eos.unsqueeze(1)
    if pad_id is not None and pad_id != eos_id:
        mask &= responses != pad_id
    return mask.long(), ~has_eos


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, as `generate` counts them for left-padded rows."""
    return (attention_mask.cumsum(dim=1) - 1).clamp(min=0)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log π(token) under logits scaled by the sampling temperature.  [B, T, V], [B, T] -> [B, T]"""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return torch.gather(logp, 2, tokens.unsqueeze(-1)).squeeze(-1)


def response_slice(per_position: torch.Tensor, prompt_width: int) -> torch.Tensor:
    """From outputs at every position [B, P+T, ...], those that predict response tokens: positions P-1 … P+T-2
    (the output at position j is about token j+1)."""
    return per_position[:, prompt_width - 1:-1]


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id rows left-padded to one width: ids and attention mask [B, P]."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1
    return ids, mask
