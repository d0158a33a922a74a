"""Loading a model or tokenizer from a local folder or a Hub id, failing clearly when neither works."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    pass


def _explain(name_or_path: str, what: str, exc: Exception) -> ModelLoadError:
    if Path(name_or_path).exists():
        return ModelLoadError(f"cannot load the {what} in '{name_or_path}': {type(exc).__name__}: {exc}")
    return ModelLoadError(
        f"'{name_or_path}' is not a local folder, and the {what} could not be fetched from the Hugging Face Hub "
        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Download it on a machine with "
        f"access (`hf download {name_or_path} --local-dir DIR`) and point the recipe at DIR."
    )


def load_tokenizer(name_or_path: str, chat_template: str | None = None) -> Any:
    """A fast tokenizer; `chat_template` (Jinja text) replaces the model's own when given."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except Exception as exc:  # OSError / HF errors / connection errors: all mean "not loadable here"
        raise _explain(name_or_path, "tokenizer", exc) from exc
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # common for base models; labels come from masks, not pad ids
    return tokenizer


def _torch_dtype(dtype: str) -> Any:
    """`dtype` as from_pretrained takes it: 'auto' keeps the checkpoint's dtype on GPU, float32 on CPU (bf16
    matmuls on CPU are slow and fp16 ones unsupported); otherwise the named torch dtype."""
    import torch

    if dtype == "auto":
        return "auto" if torch.cuda.is_available() else torch.float32
    return getattr(torch, dtype)


def _load_mole(name_or_path: str) -> Any:
    """A MoLE adapter folder, or a MoLE serving export, loaded with its experts; None for anything else.

    Checked first: a MoLE adapter looks like a LoRA adapter and an export's root like a full model, and either
    generic path would drop the routed experts without a word.
    """
    from pathlib import Path

    path = Path(name_or_path)
    if (path / "mole_config.json").is_file():
        from rlmed.models.mole import load

        logger.info("%s is a MoLE adapter; loading its base with every expert and router", name_or_path)
        return load(None, path)
    if (path / "experts" / "mole_config.json").is_file():
        from rlmed.models.mole import load_exported

        logger.info("%s is a MoLE serving export; loading it with its routed experts", name_or_path)
        return load_exported(path)
    return None


# The attention kernels that need a package of their own, and the module that package installs.
FLASH_PACKAGES = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}


def resolve_attention(value: str | None) -> str | None:
    """`attn_implementation` for from_pretrained: None lets transformers choose (sdpa where the model has it);
    auto picks flash_attention_2 where flash-attn and CUDA exist, so that packed, padding-free batches attend
    per document instead of over the whole flattened batch."""
    import importlib.util

    import torch

    if value in (None, "auto"):
        usable = torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None
        return "flash_attention_2" if usable else None
    package = FLASH_PACKAGES.get(value)
    if package and importlib.util.find_spec(package) is None:
        raise ValueError(f"args.attn_implementation: {value} needs the {package} package (pip install flash-attn, "
                         "on a CUDA machine); use auto to pick it only where it is installed")
    return value


def load_causal_lm(name_or_path: str, dtype: str = "auto", attn_implementation: str | None = None,
                   **kwargs: Any) -> Any:
    """AutoModelForCausalLM from a folder or Hub id; `dtype` 'auto' keeps the checkpoint's dtype on GPU and
    uses float32 on CPU (bf16 matmuls on CPU are slow and fp16 ones unsupported).

    A LoRA adapter folder loads transparently: its recorded base is loaded and the adapter merged in.
    """
    from transformers import AutoModelForCausalLM

    from rlmed.models.lora import adapter_base, apply_adapter

    torch_dtype = _torch_dtype(dtype)
    attention = resolve_attention(attn_implementation)
    if attention is not None:
        kwargs["attn_implementation"] = attention
    mole_model = _load_mole(name_or_path)
    if mole_model is not None:
        return mole_model
    base = adapter_base(name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(base or name_or_path, dtype=torch_dtype, **kwargs)
    except Exception as exc:
        what = f"base model of the adapter in '{name_or_path}'" if base else "model"
        raise _explain(base or name_or_path, what, exc) from exc
    if base:
        logger.info("%s is a LoRA adapter on %s; merging it into the base weights", name_or_path, base)
        model = apply_adapter(model, name_or_path)
    return model


def load_scalar_head_model(name_or_path: str, dtype: str = "auto", pad_token_id: int | None = None) -> Any:
    """AutoModelForSequenceClassification with one output (a reward or value model) from a folder or Hub id.

    A reward model saved by `reward_model` loads with its trained head; a causal LM gets a new, randomly
    initialised head on its backbone. A LoRA adapter folder loads transparently, as in load_causal_lm.
    """
    from transformers import AutoModelForSequenceClassification

    from rlmed.models.lora import adapter_base, apply_adapter

    torch_dtype = _torch_dtype(dtype)
    from transformers.utils import logging as hf_logging

    base = adapter_base(name_or_path)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a causal LM has no head yet: transformers' "MISSING score.weight" is expected
    try:
        model = AutoModelForSequenceClassification.from_pretrained(base or name_or_path, num_labels=1,
                                                                   dtype=torch_dtype, output_loading_info=True)
    except Exception as exc:
        what = f"base model of the adapter in '{name_or_path}'" if base else "model"
        raise _explain(base or name_or_path, what, exc) from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    model, info = model
    new_head = [k for k in info.get("missing_keys", []) if k.split(".")[0] in ("score", "classifier")]
    if new_head:
        logger.info("%s has no scalar head: %s initialised randomly", name_or_path, ", ".join(sorted(new_head)))
    if base:
        model = apply_adapter(model, name_or_path)
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    return model
