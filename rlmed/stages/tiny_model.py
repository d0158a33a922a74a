"""Stage `tiny_model`: a tiny Qwen2/Llama-shape model and a BPE tokenizer trained on the given texts.

It lets the embedded recipe and the tests run the real pipeline on a laptop: the output is an ordinary model
folder, referenced as `$<id>.model` like any downloaded model. The build is deterministic (same args and
texts, same files) and cached; see rlmed.models.tiny.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from rlmed.stages.base import Input, StageContext, StageSpec


@dataclass(kw_only=True)
class Args:
    architecture: Literal["qwen2", "llama"] = "qwen2"
    """Model family whose config and code are used."""
    vocab_size: int = 4096
    """Tokenizer vocabulary size, special tokens included."""
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    max_position_embeddings: int = 2048
    seed: int = 0
    """Seed of the weight initialisation."""

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("hidden_size must divide by num_heads, and num_heads by num_kv_heads")
        if self.vocab_size < 300:
            raise ValueError("vocab_size must be at least 300 (256 bytes + special tokens + merges)")


def run(ctx: StageContext, inputs: dict[str, Any], args: Args) -> dict[str, Any]:
    from dataclasses import asdict

    from rlmed.data.sources import load_sources, text
    from rlmed.models.tiny import TinySpec, build_tiny

    texts = load_sources(inputs["texts"], text, seed=0).items
    texts.sort()  # the tokenizer must not depend on mixing order
    out = build_tiny(TinySpec(**asdict(args)), texts, ctx.output("model"))
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(out)
    return {"tokenizer_texts": len(texts), "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
            "num_layers": config.num_hidden_layers}


SPEC = StageSpec(
    kind="tiny_model",
    args=Args,
    inputs={"texts": Input("data", many=True, doc="texts the tokenizer is trained on (any supported format)")},
    outputs={"model": "model"},
    run=run,
    ranks="main",  # a cheap, deterministic build: one rank writes it, the others use the folder
    doc=__doc__,
)
