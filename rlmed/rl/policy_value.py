"""PPO's policy and value model as one module, so one optimizer and one DeepSpeed engine train both.

The value model is a sequence-classification model read at every position (backbone + `score` head). The
gradient-checkpointing switches forward to both halves, under the names transformers, accelerate and trl's
generation unwrapping call.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def bare(model: nn.Module) -> nn.Module:
    """The transformers model under a peft wrapper (LoRA layers stay injected in it), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class PolicyAndValue(nn.Module):
    """The policy LM and the value model (a sequence-classification model read at every token) as one module."""

    def __init__(self, policy: nn.Module, value_model: nn.Module):
        super().__init__()
        self.policy = policy
        self.value_model = value_model
        # The Trainer and DeepSpeed's "auto" bucket sizes read hidden_size from model.config.
        self.config = policy.config

    def _value_parts(self) -> tuple[nn.Module, nn.Module]:
        model = bare(self.value_model)
        head = getattr(model, "score", None)
        if head is None:
            raise TypeError(f"value model {type(model).__name__} has no `score` head; use a decoder model's "
                            "ForSequenceClassification class (as reward_model writes)")
        return getattr(model, model.base_model_prefix), head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                with_values: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             use_cache=False).logits
        if not with_values:
            return logits, None
        backbone, head = self._value_parts()
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False).last_hidden_state
        return logits, head(hidden).squeeze(-1).float()

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None,
                                        every_n_layers: int = 1, offload: bool = False) -> None:
        # Non-reentrant by default: with a LoRA model's frozen embeddings, reentrant checkpointing would see no
        # input that requires grad and pass no gradient to the adapters.
        kwargs = activation_checkpointing_kwargs or {"use_reentrant": False}
        for model in (self.policy, self.value_model):
            bare(model).activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs,
                                                         every_n_layers=every_n_layers, offload=offload)
            if hasattr(model, "peft_config"):
                model.enable_input_require_grads()

    def activation_checkpointing_disable(self) -> None:
        for model in (self.policy, self.value_model):
            bare(model).activation_checkpointing_disable()

    # The older names, which trl's generation unwrapping still calls around generate().
    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None, **kwargs: Any) -> None:
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.activation_checkpointing_disable()

    @property
    def is_gradient_checkpointing(self) -> bool:  # read by trl's generation unwrapping
        return bool(getattr(bare(self.policy), "is_activation_checkpointing", False))
