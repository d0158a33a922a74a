"""Stage `tiny_model`: a tiny Qwen2/Llama-shape model and a BPE tokenizer trained on the given texts.

It lets the embedded recipe and the tests run the real pipeline on a laptop: the output is an ordinary model
folder, referenced as `$<id>.model` like any downloaded model. The build is deterministic (same args and
texts, same files) and cached; see rlmed.models.tiny.
"""

from __future__ import annotations

from typing import Any

from rlmed.models.tiny import TinySpec
from rlmed.stages.base import Input, StageContext, StageSpec


# The stage's args are the model's shape, declared once with the builder.
Args = TinySpec


def run(ctx: StageContext, inputs: dict[str, Any], args: Args) -> dict[str, Any]:
    from rlmed.data.sources import load_sources, text
    from rlmed.models.tiny import build_tiny

    texts = load_sources(inputs["texts"], text, seed=0).items
    texts.sort()  # the tokenizer must not depend on mixing order
    out = build_tiny(args, texts, ctx.output("model"))
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
