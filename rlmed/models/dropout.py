"""Switching dropout off in a model that stays in train mode (PPO's policy and value model).

PPO's update must compute the same function that produced the rollout's old log-probs and values (in eval
mode), or the ratio π/π_old at unchanged weights is noise around 1 (its measured spread: docs/benchmarks.md)
that the clipping and the KL then act on. Eval mode during the update is no way out: transformers skips
gradient checkpointing outside train mode, and the Trainer and DeepSpeed call model.train() anyway. So the
probabilities themselves are set to 0: every dropout module (LoRA's lora_dropout among them) and every float
attribute named like a drop rate (attention_dropout, dropout, attn_pdrop, layerdrop, ...), which is what
attention layers hand to functional dropout — transformers copies them from the config once, at construction.
The config itself is left alone, so a saved model keeps its own settings.
"""

from __future__ import annotations

from torch import nn

_DROPOUT_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def disable_dropout(model: nn.Module) -> int:
    """Set every dropout probability in `model` to 0, in place; returns how many were above 0."""
    changed = 0
    for module in model.modules():
        if isinstance(module, _DROPOUT_MODULES):
            changed += module.p > 0
            module.p = 0.0
        rates = [name for name, value in vars(module).items()
                 if "drop" in name.lower() and isinstance(value, float)]
        for name in rates:
            changed += getattr(module, name) > 0
            setattr(module, name, 0.0)
    return int(changed)
