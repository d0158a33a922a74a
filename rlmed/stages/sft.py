"""Stage `sft`: full-parameter supervised fine-tuning on dialogues, through trl's SFTTrainer.

Dialogues (alpaca, ShareGPT, OpenAI messages; multi-turn) are rendered with the model's chat template, or
`args.chat_template`, and tokenised here in batches with a mask of the assistant's tokens (rlmed.data.chat, which
needs no generation markers in the template) and labels built from it, so the loss falls on assistant tokens
only, end-of-turn included. Truncation (`trainer.max_length`) and packing (`trainer.packing`) are trl's. Chain two
`sft` stages for DISC-MedLLM's two-stage SFT.

Batches are drawn in plain random order and padded, as in transformers. Two switches cut the padding, each at a
cost, so neither is the default: `trainer.train_sampling_strategy: group_by_length` (the per-step loss then
follows the batches' lengths, and the batches depend on the per-device batch size) and `trainer.packing: true`
(padding-free rows that pay only under a varlen attention such as flash_attention_2; the stage warns when they
would run under sdpa/eager). Their figures: docs/benchmarks.md, bench.data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlmed.data.tokenized import tokenize_all  # re-exported: the sft and mole stages' tokenisation
from rlmed.models.lora import ModelArgs
from rlmed.stages.base import Input, StageContext, StageSpec


@dataclass(kw_only=True)
class Args(ModelArgs):
    chat_template: str | None = None
    """Jinja chat template text, or a path to a .jinja file; None: the model's own template."""
    num_samples: int | None = None
    """Dialogues after mixing (sources up- or down-sampled to reach it); None: every row once."""
    validation_fraction: float = 0.05
    """Share of mixed dialogues held out for the eval loss (when no `validation` input); 0 turns it off."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.validation_fraction < 0.5:
            raise ValueError(f"validation_fraction must be within 0..0.5, got {self.validation_fraction}")


def read_template(value: str | None) -> str | None:
    """A template given inline, or by path to a file holding it."""
    if value is None or "{" in value:
        return value
    path = Path(value)
    if not path.is_file():
        raise FileNotFoundError(f"args.chat_template: '{value}' is neither a Jinja template nor a file")
    return path.read_text(encoding="utf-8")


def warn_dense_packing(ctx: StageContext, config: Any, model: Any) -> None:
    """Packed, padding-free batches only pay with varlen attention; say so where sdpa/eager will run them."""
    attention = getattr(model.config, "_attn_implementation", None)
    if getattr(config, "packing", False) and attention in ("sdpa", "eager"):
        ctx.log.warning("trainer.packing with %s attention: a batch's packed rows are attended as one sequence "
                        "under a block-diagonal mask, which costs (rows x max_length)^2 and is slower than padded "
                        "batches (docs/benchmarks.md, bench.data); set args.attn_implementation: "
                        "flash_attention_2 (pip install flash-attn) on a GPU, or trainer.packing: false", attention)


def run(ctx: StageContext, inputs: dict[str, Any], args: Args) -> dict[str, Any]:
    from trl import SFTTrainer

    from rlmed import training
    from rlmed.data.prepared import DataCache
    from rlmed.data.sources import bad_row_metrics, dialogue, load_sources
    from rlmed.models.loading import load_causal_lm, load_tokenizer

    cache = DataCache.for_run(ctx.run_dir)
    loaded = load_sources(inputs["data"], dialogue, seed=ctx.seed, total=args.num_samples, cache=cache)
    mixed = loaded.items
    if "validation" in inputs:
        train_rows, eval_rows = mixed, load_sources(inputs["validation"], dialogue, seed=ctx.seed, cache=cache).items
    else:
        n_eval = int(len(mixed) * args.validation_fraction)
        train_rows, eval_rows = mixed[n_eval:], mixed[:n_eval]

    tokenizer = load_tokenizer(inputs["model"], chat_template=read_template(args.chat_template))
    if not tokenizer.chat_template:
        raise ValueError(f"the model at {inputs['model']} has no chat template; set args.chat_template")
    # The config first: under ZeRO-3 it makes from_pretrained load the weights already partitioned; and its
    # max_length lets the cached tokenisation do SFTTrainer's truncation, so the trainer skips its own pass.
    config = training.trainer_config(ctx, "trl.SFTConfig", has_eval=bool(eval_rows))
    train_set, eval_set, dropped = ready_sets(tokenizer, train_rows, eval_rows, cache, config)
    ctx.log.info("sft data: %d train dialogues, %d validation", len(train_rows), len(eval_rows))
    model = load_causal_lm(inputs["model"], dtype=args.dtype, attn_implementation=args.attn_implementation)
    model, parameters = training.with_lora(model, args.lora)
    warn_dense_packing(ctx, config, model)
    trainer = SFTTrainer(model=model, args=config, train_dataset=train_set, eval_dataset=eval_set,
                         processing_class=tokenizer, callbacks=training.callbacks(ctx))
    metrics = training.train(ctx, trainer)
    training.save_model(trainer, tokenizer, ctx.output("model"), ctx.output("merged") if args.merge else None)
    return {**metrics, **parameters, "train_dialogues": len(train_rows), "eval_dialogues": len(eval_rows),
            **dropped, **bad_row_metrics(loaded)}


def ready_sets(tokenizer: Any, train_rows: Any, eval_rows: Any, cache: Any, config: Any,
               dialogue_of: Any = None) -> tuple[Any, Any, dict[str, int]]:
    """The tokenised training and validation sets. Where SFTTrainer would only truncate them (no packing), the
    cut is done in the cached tokenisation and the trainer told to skip its preparation: the same rows and tokens
    (tests/unit/test_trainer_ready.py) without a second pass over every row and a copy beside the cache. Also
    the rows the cut left without a trained token (dropped, as the trainer drops them), per set."""
    from rlmed.data.tokenized import sft_truncation, skip_trainer_preparation, trainer_ready

    cut = sft_truncation(config)
    sets, dropped = [], {}
    for name, rows in (("train", train_rows), ("validation", eval_rows)):
        if not len(rows):
            sets.append(None)
            continue
        data = tokenize_all(tokenizer, rows, name, cache, dialogue_of=dialogue_of, truncate=cut)
        if cut is not None:
            data, dropped[f"{name}_rows_truncated_away"] = trainer_ready(data)
            if not len(data):
                raise ValueError(f"every {name} dialogue lost all its assistant tokens to trainer.max_length="
                                 f"{cut[0]} ({cut[1]} keeps each dialogue's first {cut[0]} tokens): raise "
                                 f"trainer.max_length")
        sets.append(data)
    if cut is not None:
        skip_trainer_preparation(config)
    return sets[0], sets[1], dropped


SPEC = StageSpec(
    kind="sft",
    args=Args,
    inputs={
        "model": Input("model", doc="model folder or Hub id to fine-tune"),
        "data": Input("data", many=True, doc="dialogues: alpaca, sharegpt or messages rows, mixable by weight"),
        "validation": Input("data", many=True, required=False, doc="held-out dialogues for the eval loss"),
    },
    outputs={"model": "model", "merged": "merged"},
    optional_outputs=frozenset({"merged"}),
    run=run,
    trainer_config="trl.SFTConfig",
    trainer_defaults={"per_device_train_batch_size": 8, "learning_rate": 2e-5, "num_train_epochs": 1,
                      "max_length": 1024},
    doc=__doc__,
)
