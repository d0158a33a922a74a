"""Stage `sft`: full-parameter supervised fine-tuning on dialogues, through trl's SFTTrainer.

Dialogues (alpaca, ShareGPT, OpenAI messages; multi-turn) are rendered with the model's chat template, or one
given in `args.chat_template`, and tokenised here with a mask of the assistant's tokens (rlmed.data.chat), which
works with templates that have no generation markers. SFTTrainer turns that mask into labels, so the loss falls
on assistant tokens only, end-of-turn included; truncation (`trainer.max_length`) and optional packing
(`trainer.packing`) are trl's. Chain two `sft` stages for DISC-MedLLM's two-stage SFT.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def tokenize_all(tokenizer: Any, dialogues: list[list[dict]], name: str) -> Any:
    from datasets import Dataset
    from tqdm import tqdm

    from rlmed.data.chat import tokenize_dialogue

    rows = [tokenize_dialogue(tokenizer, d) for d in tqdm(dialogues, desc=f"tokenising {name}", unit="dialogue",
                                                          disable=len(dialogues) < 5000)]
    return Dataset.from_dict({"input_ids": [r["input_ids"] for r in rows],
                              "assistant_masks": [r["assistant_masks"] for r in rows]})


def run(ctx: StageContext, inputs: dict[str, Any], args: Args) -> dict[str, Any]:
    from trl import SFTTrainer

    from rlmed import training
    from rlmed.data.sources import bad_row_metrics, dialogue, load_sources
    from rlmed.models.loading import load_causal_lm, load_tokenizer

    loaded = load_sources(inputs["data"], dialogue, seed=ctx.seed, total=args.num_samples)
    mixed = loaded.items
    if "validation" in inputs:
        train_rows, eval_rows = mixed, load_sources(inputs["validation"], dialogue, seed=ctx.seed).items
    else:
        n_eval = int(len(mixed) * args.validation_fraction)
        train_rows, eval_rows = mixed[n_eval:], mixed[:n_eval]

    tokenizer = load_tokenizer(inputs["model"], chat_template=read_template(args.chat_template))
    if not tokenizer.chat_template:
        raise ValueError(f"the model at {inputs['model']} has no chat template; set args.chat_template")
    train_set = tokenize_all(tokenizer, train_rows, "train")
    eval_set = tokenize_all(tokenizer, eval_rows, "validation") if eval_rows else None
    ctx.log.info("sft data: %d train dialogues, %d validation", len(train_rows), len(eval_rows))

    config = training.trainer_config(ctx, "trl.SFTConfig", has_eval=eval_set is not None,
                                     per_device_train_batch_size=8, learning_rate=2e-5, num_train_epochs=1,
                                     max_length=1024)
    # The config first: under ZeRO-3 it makes from_pretrained load the weights already partitioned.
    model, parameters = training.with_lora(load_causal_lm(inputs["model"], dtype=args.dtype), args.lora)
    trainer = SFTTrainer(model=model, args=config, train_dataset=train_set, eval_dataset=eval_set,
                         processing_class=tokenizer, callbacks=training.callbacks(ctx))
    metrics = training.train(ctx, trainer)
    training.save_model(trainer, tokenizer, ctx.output("model"), ctx.output("merged") if args.merge else None)
    return {**metrics, **parameters, "train_dialogues": len(train_rows), "eval_dialogues": len(eval_rows),
            **bad_row_metrics(loaded)}


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
    doc=__doc__,
)
