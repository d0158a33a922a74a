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

from rlmed.data.prepared import Codec, cached_map
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


KTO_ROWS = Codec("kto", kto_row)
"""KTO rows through the run's data cache (rlmed.data.prepared): read once per node, memory-mapped."""


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {key: [r[key] for r in rows] for key in ("prompt", "completion", "label")}


def kto_columns(cache: Any, items: Any, name: str) -> Any:
    """The rows as the Dataset KTOTrainer takes (prompt, completion, label), cached per source, memory-mapped."""
    from datasets import Features, Value

    # trl's conversational KTO columns, declared so that every source's cached columns concatenate.
    messages = [{"role": Value("string"), "content": Value("string")}]
    features = Features({"prompt": messages, "completion": messages, "label": Value("bool")})
    return cached_map(cache, "kto_columns", items, _columns, {"columns": "kto-1"}, features, desc=f"KTO {name} rows")


def run(ctx: StageContext, inputs: dict[str, Any], args: Args) -> dict[str, Any]:
    from trl import KTOTrainer

    from rlmed import training
    from rlmed.data.prepared import DataCache
    from rlmed.data.sources import bad_row_metrics, load_sources
    from rlmed.data.tokenized import column_values
    from rlmed.models.loading import load_causal_lm, load_tokenizer

    cache = DataCache.for_run(ctx.run_dir)
    loaded = load_sources(inputs["data"], KTO_ROWS, seed=ctx.seed, total=args.num_samples, cache=cache)
    n_eval = int(len(loaded.items) * args.validation_fraction)
    train_set = kto_columns(cache, loaded.items[n_eval:], "train")
    eval_set = kto_columns(cache, loaded.items[:n_eval], "validation") if n_eval else None
    desirable = int(column_values(train_set, "label").sum()) if len(train_set) else 0
    if desirable in (0, len(train_set)):
        raise ValueError(f"KTO needs desirable and undesirable answers among the {len(train_set)} training rows; "
                         f"got {desirable} desirable")

    tokenizer = load_tokenizer(inputs["model"])
    config = training.trainer_config(ctx, "trl.KTOConfig", has_eval=eval_set is not None)
    model = load_causal_lm(inputs["model"], dtype=args.dtype, attn_implementation=args.attn_implementation)
    model, parameters = training.with_lora(model, args.lora)
    trainer = KTOTrainer(model=model, args=config, train_dataset=train_set, eval_dataset=eval_set,
                         processing_class=tokenizer, callbacks=training.callbacks(ctx))
    metrics = training.train(ctx, trainer)
    training.save_model(trainer, tokenizer, ctx.output("model"), ctx.output("merged") if args.merge else None)
    return {**metrics, **parameters, "train_rows": len(train_set), "eval_rows": n_eval,
            "train_desirable": desirable, "train_undesirable": len(train_set) - desirable,
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
