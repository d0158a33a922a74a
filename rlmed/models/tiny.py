"""Building a tiny Llama/Qwen2-shape model and a byte-level BPE tokenizer, deterministically.

The result is an ordinary model folder (config.json, model.safetensors, tokenizer files with a chat template),
loaded later by path exactly like a downloaded model. Builds are cached under $RLMED_CACHE_DIR (default
~/.cache/rlmed/tiny_models) by a hash of the settings and the training texts, so tests and repeated runs copy
instead of retraining the tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Literal

from rlmed.models.chat_template import CHATML_TEMPLATE, EOS_TOKEN, PAD_TOKEN, SPECIAL_TOKENS

logger = logging.getLogger(__name__)
BUILD_VERSION = 1  # bump when the build changes, so stale cache entries are not reused


@dataclass(frozen=True, kw_only=True)
class TinySpec:
    """The tiny model's shape (also the `tiny_model` stage's args)."""

    architecture: Literal["qwen2", "llama"] = "qwen2"
    """Model family whose config and code are used."""
    vocab_size: int = 4096
    """Tokenizer vocabulary size, special tokens included."""
    hidden_size: int = 64
    """Width of the residual stream; a multiple of num_heads. Tiny so a whole recipe trains in minutes on a CPU."""
    num_layers: int = 2
    """Decoder layers."""
    num_heads: int = 4
    """Attention heads (head size hidden_size / num_heads)."""
    num_kv_heads: int = 2
    """Key/value heads, dividing num_heads: fewer than num_heads makes it grouped-query attention, as in Qwen2."""
    intermediate_size: int = 256
    """Width of the MLP's hidden layer (4 × hidden_size, the usual ratio)."""
    max_position_embeddings: int = 2048
    """Longest sequence the model's config allows, in tokens; well above the lengths tiny recipes train on."""
    seed: int = 0
    """Seed of the weight initialisation."""

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(f"hidden_size must divide by num_heads, and num_heads by num_kv_heads, got "
                             f"hidden_size={self.hidden_size}, num_heads={self.num_heads}, "
                             f"num_kv_heads={self.num_kv_heads}")
        if self.vocab_size < 300:
            raise ValueError(f"vocab_size must be at least 300 (256 bytes + special tokens + merges), got "
                             f"{self.vocab_size}")


def cache_root() -> Path:
    return Path(os.environ.get("RLMED_CACHE_DIR", Path.home() / ".cache" / "rlmed")) / "tiny_models"


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE tokenizer (every byte representable, so no unknown tokens) wrapped as a HF fast one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN, chat_template=CHATML_TEMPLATE,
        model_max_length=1 << 20, clean_up_tokenization_spaces=False,
    )


def build_model(spec: TinySpec, vocab_size: int, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    config_cls = Qwen2Config if spec.architecture == "qwen2" else LlamaConfig
    config = config_cls(
        vocab_size=vocab_size, hidden_size=spec.hidden_size, num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_kv_heads,
        intermediate_size=spec.intermediate_size, max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def build_tiny(spec: TinySpec, texts: list[str], out_dir: Path) -> Path:
    """Write a tiny model folder to `out_dir`, from the cache when the same build exists there."""
    key = hashlib.sha256(
        json.dumps({"v": BUILD_VERSION, "spec": asdict(spec), "texts": texts}, ensure_ascii=False).encode()
    ).hexdigest()[:20]
    cached = cache_root() / key
    if not (cached / "config.json").exists() or not (cached / "BUILD_OK").exists():
        logger.info("building tiny %s model (vocab %d, hidden %d, %d layers)", spec.architecture,
                    spec.vocab_size, spec.hidden_size, spec.num_layers)
        tokenizer = train_tokenizer(texts, spec.vocab_size)
        model = build_model(spec, len(tokenizer), tokenizer)
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=f".{key}."))
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "BUILD_OK").write_text(key)  # written last: a folder without it is a crashed build
        shutil.rmtree(cached, ignore_errors=True)
        os.replace(tmp, cached)
    else:
        logger.info("tiny model from cache %s", cached)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(cached, out_dir, ignore=shutil.ignore_patterns("BUILD_OK"))
    return out_dir
