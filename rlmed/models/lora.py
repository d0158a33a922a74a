"""LoRA for training stages, and adapter folders that later stages load like any model.

A LoRA stage's `model` artifact is a peft adapter folder: adapter weights, `adapter_config.json` recording the
base model it was trained on, and the tokenizer. `rlmed.models.loading.load_causal_lm` sees the adapter config,
loads the base, applies the adapter and merges it, so every later stage takes either kind of folder.
`merge: true` also writes the merged full model (the `merged` output), for serving or sharing.

Chains: a model merged from an adapter folder is named after that folder (`apply_adapter`), so an adapter
trained on it records the folder, not the folder's own base, as `base_model_name_or_path`; loading recurses down
the chain and reproduces every upstream stage's training. Plain peft cannot follow such a chain (it expects a
full model there); the `merged` output is the standalone form for tools outside rlmed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)
ADAPTER_CONFIG = "adapter_config.json"


@dataclass(kw_only=True)
class LoraSettings:
    r: int = 16
    """Rank of the update matrices."""
    alpha: int = 32
    """Scale: the update is multiplied by alpha / r."""
    dropout: float = 0.05
    """Dropout on the adapters' input, within 0..1 (1 excluded): a light regulariser for small data sets; the
    ppo stage sets it to 0 while training (rlmed.models.dropout)."""
    target_modules: str | list[str] = "all-linear"
    """Module names to adapt, or 'all-linear' (every linear layer but the output head)."""
    modules_to_save: list[str] = field(default_factory=list)
    """Modules trained in full and saved with the adapter (e.g. embed_tokens after adding tokens)."""

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"lora.r must be at least 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be within 0..1, got {self.dropout}")


@dataclass(kw_only=True)
class ModelArgs:
    """The arguments every stage that trains a model shares (a base for their `Args`)."""

    dtype: str = "auto"
    """Weights dtype when loading: auto (float32 on CPU), float32, bfloat16, float16."""
    lora: LoraSettings | None = None
    """Train LoRA adapters instead of all weights: {r, alpha, dropout, target_modules, modules_to_save}."""
    merge: bool = False
    """With lora: also write base + adapter merged into one full model (the `merged` output)."""
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2", "flash_attention_3",
                                 "flex_attention"] = "auto"
    """Attention kernels: auto = flash_attention_2 where flash-attn and CUDA exist (packed, padding-free batches
    then attend per document), else transformers' default (sdpa)."""

    def __post_init__(self) -> None:
        if self.merge and self.lora is None:
            raise ValueError(f"merge: true needs a lora block (a full model needs no merging), got merge={self.merge}, "
                             f"lora={self.lora}")


def wrap(model: Any, settings: LoraSettings, task_type: str = "CAUSAL_LM") -> Any:
    """The model with trainable LoRA adapters (base weights frozen). task_type SEQ_CLS also trains the scalar
    head of a reward or value model in full."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=settings.target_modules, modules_to_save=settings.modules_to_save or None,
        task_type=task_type,
    )
    peft_model = get_peft_model(model, config)
    trainable, total = peft_model.get_nb_trainable_parameters()
    logger.info("LoRA r=%d alpha=%d on %s: %d of %d parameters trainable (%.2f%%)", settings.r, settings.alpha,
                settings.target_modules, trainable, total, 100.0 * trainable / max(total, 1))
    return peft_model


def adapter_base(path: str | Path) -> str | None:
    """The base model an adapter folder records, or None when `path` is not an adapter folder."""
    config_file = Path(path) / ADAPTER_CONFIG
    if not config_file.is_file():
        return None
    return json.loads(config_file.read_text(encoding="utf-8")).get("base_model_name_or_path")


def apply_adapter(base_model: Any, adapter_dir: str | Path) -> Any:
    """`base_model` with the adapter in `adapter_dir` merged into its weights: a plain transformers model, named
    after `adapter_dir` (see the module docstring: chains)."""
    from peft import PeftConfig, PeftModel

    config = PeftConfig.from_pretrained(str(adapter_dir))
    if config.task_type == "CAUSAL_LM" and not hasattr(base_model, "prepare_inputs_for_generation"):
        # A causal LM's adapter under a scalar head (a reward or value model started from a LoRA stage's output):
        # it adapts the shared backbone only, but peft's causal-LM wrapper wants generation methods the head
        # model lacks. Without a task type peft wraps the same modules under the same weight names.
        config.task_type = None
    model = PeftModel.from_pretrained(base_model, str(adapter_dir), config=config).merge_and_unload()
    # peft records `model.name_or_path` as the base of any adapter trained next; left at the base's name, a
    # reload of that adapter would start from the base without this adapter's training.
    name = str(Path(adapter_dir).absolute())  # absolute: the record must not depend on the working directory
    model.name_or_path = name
    model.config.name_or_path = name
    return model


def save_merged(adapter_dir: Path, out_dir: Path, tokenizer: Any, scalar_head: bool = False) -> None:
    """Write base + adapter as one full model folder.

    Loaded afresh from the saved adapter (not from the trainer's model), so it works whatever sharding the
    training used; the caller makes sure no ZeRO-3 config is active, or the load would be partitioned.
    """
    from rlmed.models.loading import load_causal_lm, load_scalar_head_model

    # A reward model merges as what it is (a scalar head on the backbone), not as a causal LM.
    load = load_scalar_head_model if scalar_head else load_causal_lm
    merged = load(str(adapter_dir), dtype="float32")
    if scalar_head:
        merged.config.pad_token_id = tokenizer.pad_token_id  # the head reads the last non-pad token
    merged.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    logger.info("merged model written to %s", out_dir)
