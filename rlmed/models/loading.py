"""Loading a model or tokenizer from a local folder or a Hub id, failing clearly when neither works.

Every stage loads through here, so a LoRA adapter folder (merged on load, down a chain of adapters), a MoLE
folder and a full model folder load alike wherever a causal LM is expected; under a scalar head (reward or value
model) a MoLE model is refused, since its routed experts cannot be merged into the backbone.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from rlmed.models.lora import ADAPTER_CONFIG, adapter_base

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


def _mole_kind(name_or_path: str) -> str | None:
    """'adapter' for a MoLE adapter folder, 'export' for a MoLE serving export, None for anything else."""
    path = Path(name_or_path)
    if (path / "mole_config.json").is_file():
        return "adapter"
    if (path / "experts" / "mole_config.json").is_file():
        return "export"
    return None


def _load_mole(name_or_path: str, chain: tuple[str, ...], load_base: Callable[[str], Any],
               kwargs: dict[str, Any]) -> Any:
    """A MoLE adapter folder, or a MoLE serving export, loaded with its experts; None for anything else.

    Checked first: a MoLE adapter looks like a LoRA adapter and an export's root like a full model, and either
    generic path would drop the routed experts without a word. `load_base` loads an adapter's recorded base (it may
    be a LoRA chain); an export's root is a full model by construction.
    """
    kind = _mole_kind(name_or_path)
    if kind is None:
        return None
    from transformers import AutoModelForCausalLM

    from rlmed.models import mole

    path = Path(name_or_path)
    if kind == "adapter":
        base = _recorded_base(name_or_path, chain)
        logger.info("%s is a MoLE adapter on %s; loading it with every expert and router", name_or_path, base)
        return mole.load(load_base(base), path)
    logger.info("%s is a MoLE serving export; loading it with its routed experts", name_or_path)
    root = _from_pretrained(AutoModelForCausalLM, name_or_path, chain[-1] if chain else None, kwargs)
    return mole.load(root, path / mole.EXPERTS_SUBDIR)


def _refuse_mole(name_or_path: str, chain: tuple[str, ...]) -> None:
    """A scalar head (reward or value model) cannot sit on a MoLE model: its routed experts depend on each token,
    so they cannot be merged into a plain backbone, and a MoLE PeftModel takes neither a second adapter nor
    full training. Loading it generically would drop the experts without a word, so say so instead."""
    kind = _mole_kind(name_or_path)
    if kind is None:
        return
    via = f" (the base of the adapter chain {' -> '.join(chain)})" if chain else ""
    if kind == "adapter":
        start = (f"start from the model the MoLE stage was trained on ('{adapter_base(name_or_path)}', the base in "
                 f"its adapter_config.json)")
    else:
        start = "start from the model the MoLE stage was trained on (that stage's `model` input)"
    raise ModelLoadError(
        f"'{name_or_path}'{via} is a MoLE {'adapter' if kind == 'adapter' else 'serving export'}; a reward or value "
        f"model (scalar head) cannot be built on it without dropping its routed experts, which cannot be merged "
        f"into the weights (a MoLE stage's `merged` output keeps them apart in experts/ too). Instead, {start}, "
        f"or from any full or LoRA model folder.")


def _is_adapter(name_or_path: str) -> bool:
    return (Path(name_or_path) / ADAPTER_CONFIG).is_file()


def _recorded_base(name_or_path: str, chain: tuple[str, ...] = ()) -> str:
    """The base an adapter folder records; a missing one or a chain that comes back to itself fails clearly."""
    base = adapter_base(name_or_path)
    if not base:
        raise ModelLoadError(f"{Path(name_or_path) / ADAPTER_CONFIG} records no base_model_name_or_path")
    visited = [*chain, name_or_path]
    if any(_same_place(base, seen) for seen in visited):
        raise ModelLoadError(f"the adapter chain loops: {' -> '.join(visited)} -> {base}")
    return base


def _same_place(a: str, b: str) -> bool:
    return a == b or (Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve())


def _from_pretrained(auto_class: Any, name_or_path: str, adapter: str | None, kwargs: dict[str, Any]) -> Any:
    """auto_class.from_pretrained, failing with ModelLoadError; `adapter`: the folder whose base this is."""
    try:
        return auto_class.from_pretrained(name_or_path, **kwargs)
    except Exception as exc:  # OSError / HF errors / connection errors: all mean "not loadable here"
        what = f"base model of the adapter in '{adapter}'" if adapter else "model"
        raise _explain(name_or_path, what, exc) from exc


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

    A LoRA adapter folder loads transparently: its recorded base is loaded (itself possibly an adapter folder,
    loaded the same way, so a chain of LoRA stages reproduces every stage's training) and the adapter merged in.
    """
    kwargs["dtype"] = _torch_dtype(dtype)
    attention = resolve_attention(attn_implementation)
    if attention is not None:
        kwargs["attn_implementation"] = attention
    return _causal_lm(name_or_path, kwargs, ())


def _causal_lm(name_or_path: str, kwargs: dict[str, Any], chain: tuple[str, ...]) -> Any:
    """`chain`: the adapter folders above this one, outermost first (for loop checks and error messages)."""
    from transformers import AutoModelForCausalLM

    from rlmed.models.lora import apply_adapter

    below = (*chain, name_or_path)
    mole_model = _load_mole(name_or_path, chain, lambda base: _causal_lm(base, kwargs, below), kwargs)
    if mole_model is not None:
        return mole_model
    if not _is_adapter(name_or_path):
        return _from_pretrained(AutoModelForCausalLM, name_or_path, chain[-1] if chain else None, kwargs)
    base = _recorded_base(name_or_path, chain)
    model = _causal_lm(base, kwargs, below)
    logger.info("%s is a LoRA adapter on %s; merging it into the base weights", name_or_path, base)
    return apply_adapter(model, name_or_path)


def load_scalar_head_model(name_or_path: str, dtype: str = "auto", pad_token_id: int | None = None,
                           attn_implementation: str | None = None) -> Any:
    """AutoModelForSequenceClassification with one output (a reward or value model) from a folder or Hub id.

    A reward model saved by `reward_model` loads with its trained head; a causal LM gets a new, randomly
    initialised head on its backbone. A LoRA adapter folder (or chain) loads transparently, as in load_causal_lm.
    A MoLE model is refused (ModelLoadError saying what to use instead): see _refuse_mole.
    """
    kwargs: dict[str, Any] = {"dtype": _torch_dtype(dtype), "num_labels": 1}
    attention = resolve_attention(attn_implementation)
    if attention is not None:
        kwargs["attn_implementation"] = attention
    model = _scalar_head(name_or_path, kwargs, ())
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    return model


def _scalar_head(name_or_path: str, kwargs: dict[str, Any], chain: tuple[str, ...]) -> Any:
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from rlmed.models.lora import apply_adapter

    _refuse_mole(name_or_path, chain)
    if _is_adapter(name_or_path):
        return apply_adapter(_scalar_head(_recorded_base(name_or_path, chain), kwargs, (*chain, name_or_path)),
                             name_or_path)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a causal LM has no head yet: transformers' "MISSING score.weight" is expected
    try:
        model, info = _from_pretrained(AutoModelForSequenceClassification, name_or_path,
                                       chain[-1] if chain else None, {**kwargs, "output_loading_info": True})
    finally:
        hf_logging.set_verbosity(verbosity)
    new_head = [k for k in info.get("missing_keys", []) if k.split(".")[0] in ("score", "classifier")]
    if new_head:
        logger.info("%s has no scalar head: %s initialised randomly", name_or_path, ", ".join(sorted(new_head)))
    return model
