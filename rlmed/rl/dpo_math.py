"""DPO and DFPO losses as pure functions (methods.md §5), testable without a model.

Shapes: B pairs; per-sequence log-probabilities are sums over the answer's tokens; per-token tensors [B, T] come
with a mask [B, T] that is 1 on answer tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_sigmoid(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
                ref_rejected_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-pair DPO loss -log σ(β·[(log π(y_w) - log π_ref(y_w)) - (log π(y_l) - log π_ref(y_l))]).  -> [B]"""
    margin = (chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)
    return -F.logsigmoid(beta * margin)


def chosen_nll(chosen_token_logps: torch.Tensor, chosen_mask: torch.Tensor) -> torch.Tensor:
    """DFPO's instruction-following term per pair: -(1/|y_w|) Σ_t log π(y_w,t | x, y_w,<t).  [B, T] -> [B]

    Normalised by each chosen answer's own length, so a long and a short answer weigh alike — unlike a token mean
    over the whole batch (trl's "sft" loss), where long answers dominate.
    """
    mask = chosen_mask.to(chosen_token_logps.dtype)
    return -(chosen_token_logps * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def dfpo(dpo_per_pair: torch.Tensor, chosen_token_logps: torch.Tensor, chosen_mask: torch.Tensor,
         nll_weight: float) -> torch.Tensor:
    """L_DFPO = mean over pairs of (L_DPO + μ · chosen_nll); μ = 0 is plain DPO.

    `dpo_per_pair` may also be a scalar already averaged over the pairs (trl's loss, as DFPOTrainer passes it):
    the mean is linear, so the result is the same.
    """
    return (dpo_per_pair + nll_weight * chosen_nll(chosen_token_logps, chosen_mask)).mean()
