"""Stage `kto`: trl's KTOTrainer on unpaired good/bad answers (Kahneman-Tversky Optimization).

Where preference pairs need two answers to one prompt and a verdict between them, KTO needs only one answer and
whether it is desirable: what a doctor says when both answers of a task are unsafe, or when they write a corrected
answer (`rlmed review export` writes such rows as kto.jsonl). Rows:

    {"prompt": "..." or [messages ending with the user], "completion": "..." or [one assistant message] or
     {"role": "assistant", "content": ...}, "label": true | false}

The reference is the input model (trl keeps a frozen copy) or, with LoRA, the adapter-disabled base. trl logs
rewards and log-probs of desirable and undesirable answers (and eval_* on held-out rows); `trainer:` takes
`trl.KTOConfig` fields (`beta`, `desirable_weight`, `undesirable_weight`, `loss_type`, `max_length`, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlmed.data.records import Record, type_name
from rlmed.models.lora import ModelArgs
from rlmed.stages.base import Input, StageContext, StageSpec


@dataclass(kw_only=True)
class Args(ModelArgs):
    validation_fraction: float = 0.1
    """Share of rows held out for eval rewards and log-probs (0: none)."""
    num_samples: int | None = None
    """Rows after mixing; None: every row once."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.validation_fraction < 0.5:
            raise ValueError(f"validation_fraction must be within 0..0.5, got {self.validation_fraction}")


def kto_row(record: Record, fmt: str | None) -> dict[str, Any]:
    """One unpaired row in trl's conversational form: {prompt: messages, completion: [assistant], label}."""
    from rlmed.data.formats import check_order
    from rlmed.data.turns import parse_turn

    if fmt not in (None, "kto"):
        raise record.error(f"format '{fmt}' rows cannot be read as KTO rows {{prompt, completion, label}}")
    row = record.row
    for key in ("prompt", "completion", "label"):
        if key not in row:
            raise record.error(f"missing field '{key}' (KTO rows: prompt, completion, label)")
    if not isinstance(row["label"], bool):
        raise record.error(f"label must be true or false, got {type_name(row['label'])}")
    prompt = row["prompt"]
    if isinstance(prompt, str):
        if not prompt.strip():
            raise record.error("prompt is empty")
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list) and prompt:
        messages = [parse_turn(record, m, f"prompt[{i}]") for i, m in enumerate(prompt)]
        if messages[-1]["role"] != "user":
            raise record.error("prompt must end with the user's turn")
        check_order(record, messages, [f"prompt[{i}]" for i in range(len(messages))], require_final_assistant=False)
    else:
        raise record.error(f"prompt must be text or a non-empty list of messages, got {type_name(prompt)}")
    completion = row["completion"]
    if isinstance(completion, list) and len(completion) == 1:
        completion = completion[0]
    if isinstance(completion, dict):
        turn = parse_turn(record, completion, "completion")
        if turn["role"] != "assistant":
            raise record.error(f"completion must be the assistant's message, got role '{turn['role']}'")
        completion = turn["content"]
    if not isinstance(completion, str) or not completion.strip():
        raise record.error("completion must be a non-empty text or one assistant message")
    return {"prompt": messages, "completion": [{"role": "assistant", "content": completion}], "label": row["label"]}


def run(ctx: StageContext, inputs: dict[str, Any], args: Args) -> dict[str, Any]:
    from datasets import Dataset
    from trl import KTOTrainer

    from rlmed import training
    from rlmed.data.sources import bad_row_metrics, load_sources
    from rlmed.models.loading import load_causal_lm, load_tokenizer

    loaded = load_sources(inputs["data"], kto_row, seed=ctx.seed, total=args.num_samples)
    rows = list(loaded.items)
    n_eval = int(len(rows) * args.validation_fraction)
    train_rows, eval_rows = rows[n_eval:], rows[:n_eval]
    if not any(r["label"] for r in train_rows) or all(r["label"] for r in train_rows):
        raise ValueError(f"KTO needs desirable and undesirable answers among the {len(train_rows)} training rows; "
                         f"got {sum(r['label'] for r in train_rows)} desirable")

    def dataset(items: list[dict[str, Any]]) -> Any:
        return Dataset.from_dict({key: [r[key] for r in items] for key in ("prompt", "completion", "label")})

    tokenizer = load_tokenizer(inputs["model"])
    config = training.trainer_config(ctx, "trl.KTOConfig", has_eval=bool(eval_rows))
    model = load_causal_lm(inputs["model"], dtype=args.dtype, attn_implementation=args.attn_implementation)
    model, parameters = training.with_lora(model, args.lora)
    trainer = KTOTrainer(model=model, args=config, train_dataset=dataset(train_rows),
                         eval_dataset=dataset(eval_rows) if eval_rows else None, processing_class=tokenizer,
                         callbacks=training.callbacks(ctx))
    metrics = training.train(ctx, trainer)
    training.save_model(trainer, tokenizer, ctx.output("model"), ctx.output("merged") if args.merge else None)
    desirable = sum(r["label"] for r in train_rows)
    return {**metrics, **parameters, "train_rows": len(train_rows), "eval_rows": len(eval_rows),
            "train_desirable": desirable, "train_undesirable": len(train_rows) - desirable,
            **bad_row_metrics(loaded)}


SPEC = StageSpec(
    kind="kto",
    args=Args,
    inputs={
        "model": Input("model", doc="the policy to align; also the frozen reference"),
        "data": Input("data", many=True, formats=("kto",),
                      doc="unpaired rows {prompt, completion, label}, e.g. a review's kto.jsonl"),
    },
    outputs={"model": "model", "merged": "merged"},
    optional_outputs=frozenset({"merged"}),
    run=run,
    trainer_config="trl.KTOConfig",
    trainer_defaults={"per_device_train_batch_size": 8, "learning_rate": 5e-7, "num_train_epochs": 1},
    doc=__doc__,
)
