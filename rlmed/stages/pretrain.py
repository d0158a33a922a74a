"""Stage `pretrain`: continued pretraining with hybrid instruction data (methods.md §1).

Domain text (`corpus`) and instruction pairs flattened to text (`instructions`) are mixed by document —
`instruction_ratio` sets the instructions' share, or each source's `weight` sets its own — then tokenised,
joined with EOS between documents and cut into `max_length` blocks. The loss is plain next-token prediction
over every token, through transformers' Trainer. A held-out share of documents gives the eval loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlmed.data.sources import DataSource
from rlmed.models.lora import ModelArgs
from rlmed.stages.base import Input, StageContext, StageSpec


@dataclass(kw_only=True)
class Args(ModelArgs):
    max_length: int = 1024
    """Tokens per packed block."""
    instruction_ratio: float | None = None
    """Share of documents drawn from `instructions` (0..1); None: sources' weights, or every row once."""
    num_documents: int | None = None
    """Documents after mixing (sources up- or down-sampled to reach it); None: the sum of the sources' rows."""
    validation_fraction: float = 0.05
    """Share of mixed documents held out for the eval loss; 0 turns evaluation off."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.instruction_ratio is not None and not 0.0 <= self.instruction_ratio <= 1.0:
            raise ValueError(f"instruction_ratio must be within 0..1, got {self.instruction_ratio}")
        if not 0.0 <= self.validation_fraction < 0.5:
            raise ValueError(f"validation_fraction must be within 0..0.5, got {self.validation_fraction}")
        if self.max_length < 8:
            raise ValueError(f"max_length must be at least 8, got {self.max_length}")


def source_weights(corpus: list[DataSource], instructions: list[DataSource], sizes: list[int],
                   ratio: float | None) -> list[float] | None:
    """Per-source mixing weights. With `ratio`, the corpus group gets 1-ratio and the instruction group ratio,
    shared inside each group by the sources' weights (or their sizes when none are given)."""
    sources = corpus + instructions
    if ratio is None:
        given = [s.weight for s in sources]
        if all(w is None for w in given):
            return None
        if any(w is None for w in given):
            raise ValueError(f"give a weight to every corpus and instruction source, or to none, got weights {given}")
        return [float(w) for w in given]  # type: ignore[arg-type]
    weights = []
    for group, share, group_sizes in ((corpus, 1.0 - ratio, sizes[: len(corpus)]),
                                      (instructions, ratio, sizes[len(corpus):])):
        inner = [s.weight if s.weight is not None else float(n) for s, n in zip(group, group_sizes)]
        total = sum(inner)
        weights += [share * w / total if total else 0.0 for w in inner]
    return weights


def collate_blocks(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Blocks are all max_length long, so no padding and no masking: the labels are the inputs."""
    import torch

    ids = torch.tensor([row["input_ids"] for row in rows], dtype=torch.long)
    return {"input_ids": ids, "labels": ids.clone()}


def run(ctx: StageContext, inputs: dict[str, Any], args: Args) -> dict[str, Any]:
    from transformers import Trainer

    from rlmed import training
    from rlmed.artifacts import stable_hash
    from rlmed.data.prepared import ArrowItems, DataCache
    from rlmed.data.sources import bad_row_metrics, load_sources, text
    from rlmed.data.tokenized import packed_blocks, tokenize_texts, tokenizer_hash
    from rlmed.models.loading import load_causal_lm, load_tokenizer

    corpus, instructions = inputs["corpus"], inputs.get("instructions", [])
    if args.instruction_ratio and not instructions:
        raise ValueError(f"args.instruction_ratio is set but inputs.instructions is empty, got "
                         f"instruction_ratio={args.instruction_ratio}")
    cache = DataCache.for_run(ctx.run_dir)
    mixed = load_sources(corpus + instructions, text, seed=ctx.seed, total=args.num_documents, cache=cache,
                         weights=lambda sizes: source_weights(corpus, instructions, sizes, args.instruction_ratio))
    n_eval = int(len(mixed.items) * args.validation_fraction)
    train_docs, eval_docs = mixed.items[n_eval:], mixed.items[:n_eval]
    from_instructions = sum(1 for i in mixed.source_ids[n_eval:] if i >= len(corpus))

    tokenizer = load_tokenizer(inputs["model"])

    def blocks(docs: Any, name: str) -> tuple[Any, Any]:
        tokens = tokenize_texts(tokenizer, docs, name, cache)
        key = stable_hash([docs.key, tokenizer_hash(tokenizer)]) if isinstance(docs, ArrowItems) else None
        dataset, packed = packed_blocks(tokens, args.max_length, tokenizer.eos_token_id, cache, key)
        if not len(dataset):
            raise ValueError(f"{name} data has {packed.num_tokens} tokens, fewer than one block of "
                             f"max_length={args.max_length}; lower max_length or add data")
        return packed, dataset

    train_pack, train_set = blocks(train_docs, "train")
    eval_set = blocks(eval_docs, "validation")[1] if eval_docs else None
    ctx.log.info("pretrain data: %d documents (%d from instructions), %d tokens in %d blocks of %d, "
                 "%d tokens dropped at the tail", len(train_docs), from_instructions, train_pack.num_tokens,
                 len(train_set), args.max_length, train_pack.dropped_tokens)

    config = training.trainer_config(ctx, "transformers.TrainingArguments", has_eval=eval_set is not None)
    # The config first: under ZeRO-3 it makes from_pretrained load the weights already partitioned.
    model = load_causal_lm(inputs["model"], dtype=args.dtype, attn_implementation=args.attn_implementation)
    model, parameters = training.with_lora(model, args.lora)
    trainer = Trainer(model=model, args=config, train_dataset=train_set, eval_dataset=eval_set,
                      data_collator=collate_blocks, processing_class=tokenizer,
                      callbacks=training.callbacks(ctx))
    metrics = training.train(ctx, trainer)
    training.save_model(trainer, tokenizer, ctx.output("model"), ctx.output("merged") if args.merge else None)
    return {
        **metrics,
        **parameters,
        "train_documents": len(train_docs),
        "eval_documents": len(eval_docs),
        "instruction_share": from_instructions / max(1, len(train_docs)),
        "train_tokens": train_pack.num_tokens,
        "train_blocks": len(train_set),
        "dropped_tokens": train_pack.dropped_tokens,
        **bad_row_metrics(mixed),
    }


SPEC = StageSpec(
    kind="pretrain",
    args=Args,
    inputs={
        "model": Input("model", doc="model folder or Hub id to continue from"),
        "corpus": Input("data", many=True, doc="domain text (text rows; dialogue rows are flattened)"),
        "instructions": Input("data", many=True, required=False, doc="instruction pairs, flattened to text"),
    },
    outputs={"model": "model", "merged": "merged"},
    optional_outputs=frozenset({"merged"}),
    run=run,
    trainer_config="transformers.TrainingArguments",
    trainer_defaults={"per_device_train_batch_size": 8, "learning_rate": 5e-5, "num_train_epochs": 1},
    doc=__doc__,
)
