"""Stage `mole`: PediatricsGPT's mixture of universal-specific LoRA experts, trained as a secondary SFT.

Every adapted linear layer gets one universal LoRA expert (always on) and `num_experts` specific ones mixed by
a per-token noisy router (rlmed.models.mole, on stock peft through its custom-module hook; methods.md §6). The
data are task-mixed dialogues whose `task_field` (default `task`) names the task of each row: the task is used
for routing statistics per expert and per task (logged at the start, every `routing_every` steps and at the
end, to metrics.jsonl and W&B), not as a router input. Training is trl's SFTTrainer (assistant tokens only,
as in `sft`) plus the optional load-balancing loss.

The `model` output is the adapter folder (every expert, router and noise weight, and mole_config.json), which
rlmed loads anywhere a model is expected; with `merge: true` the `merged` output is the serving export: the
base with the universal expert merged, plus `experts/` (routed experts and router), which `rlmed export`
also writes and plain transformers + peft load with one documented call (see rlmed.models.mole).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from rlmed.models.mole import MoleSettings
from rlmed.stages.base import Input, StageContext, StageSpec


@dataclass(kw_only=True)
class Args(MoleSettings):
    dtype: str = "auto"
    """Weights dtype when loading: auto (float32 on CPU), float32, bfloat16, float16."""
    merge: bool = False
    """Also write the serving export (base + universal expert merged, experts/) as the `merged` output."""
    task_field: str = "task"
    """Row field naming each row's task (for routing statistics); rows without it take their file's name."""
    routing_every: int = 50
    """Steps between routing statistics (0: only at the start and the end)."""
    routing_rows_per_task: int = 16
    """Rows per task the routing statistics are measured on."""
    chat_template: str | None = None
    """Jinja chat template text, or a path to a .jinja file; None: the model's own template (as in `sft`)."""
    num_samples: int | None = None
    """Dialogues after mixing (sources up- or down-sampled to reach it); None: every row once."""
    validation_fraction: float = 0.05
    """Share of mixed dialogues held out for the eval loss (0..0.5); 0 turns it off."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.validation_fraction < 0.5:
            raise ValueError(f"validation_fraction must be within 0..0.5, got {self.validation_fraction}")
        if self.routing_every < 0 or self.routing_rows_per_task < 1:
            raise ValueError(f"routing_every must be >= 0 and routing_rows_per_task >= 1, got "
                             f"routing_every={self.routing_every}, routing_rows_per_task={self.routing_rows_per_task}")

    def settings(self) -> MoleSettings:
        return MoleSettings(**{f.name: getattr(self, f.name) for f in fields(MoleSettings)})


def _zero3(ctx: StageContext) -> bool:
    import json

    config = ctx.trainer_setting("deepspeed")
    if isinstance(config, str) and Path(config).is_file():
        config = json.loads(Path(config).read_text(encoding="utf-8"))
    return isinstance(config, dict) and config.get("zero_optimization", {}).get("stage") == 3


def dialogue_of(row: tuple[list[dict], str]) -> list[dict]:
    """The dialogue of a (dialogue, task) row."""
    return row[0]


def run(ctx: StageContext, inputs: dict[str, Any], args: Args) -> dict[str, Any]:
    from rlmed import dist, training
    from rlmed.data.formats import as_messages
    from rlmed.data.prepared import Codec, DataCache
    from rlmed.data.sources import bad_row_metrics, load_sources
    from rlmed.models import mole
    from rlmed.models.loading import load_causal_lm, load_tokenizer
    from rlmed.models.mole_training import MoleSFTTrainer, RoutingStats, probe_batches
    from rlmed.stages.sft import read_template, tokenize_all

    def task_dialogue(record: Any, fmt: str | None) -> tuple[list[dict], str]:
        # A row without the field takes its file's name: one file per task needs no extra column.
        task = record.row.get(args.task_field) if isinstance(record.row, dict) else None
        return as_messages(record, fmt), str(task if task is not None else Path(record.path).stem)

    if args.aux_loss_coef and ctx.trainer_setting("gradient_checkpointing", True) and _zero3(ctx):
        # trl forces reentrant checkpointing for PEFT under ZeRO-3, which cuts the router's loss off its gradient.
        raise ValueError("aux_loss_coef > 0 cannot train under ZeRO-3 with gradient checkpointing (trl makes it "
                         "reentrant for adapters); set trainer.gradient_checkpointing: false or aux_loss_coef: 0, "
                         f"got aux_loss_coef={args.aux_loss_coef}")
    codec = Codec(f"task_dialogue:{args.task_field}", task_dialogue, encode=list, decode=tuple)
    cache = DataCache.for_run(ctx.run_dir)
    loaded = load_sources(inputs["data"], codec, seed=ctx.seed, total=args.num_samples, cache=cache)
    rows = loaded.items
    n_eval = int(len(rows) * args.validation_fraction)
    train_rows, eval_rows = rows[n_eval:], rows[:n_eval]
    tokenizer = load_tokenizer(inputs["model"], chat_template=read_template(args.chat_template))
    train_set = tokenize_all(tokenizer, train_rows, "train", cache, dialogue_of=dialogue_of)
    eval_set = tokenize_all(tokenizer, eval_rows, "validation", cache, dialogue_of=dialogue_of) if eval_rows else None
    tasks = sorted({t for _, t in rows})
    probe_rows: dict[str, list[tuple[list[int], list[int]]]] = {}
    for (_, task), row in zip(train_rows, train_set):
        found = probe_rows.setdefault(task, [])
        if len(found) < args.routing_rows_per_task:
            found.append((row["input_ids"], row["assistant_masks"]))
        if len(probe_rows) == len(tasks) and all(len(f) >= args.routing_rows_per_task for f in probe_rows.values()):
            break  # enough of every task: no need to read the rest of a large set

    config = training.trainer_config(ctx, "trl.SFTConfig", has_eval=eval_set is not None)
    settings = args.settings()
    # The config first: under ZeRO-3 the base loads partitioned; the experts are added on top.
    model = mole.wrap(load_causal_lm(inputs["model"], dtype=args.dtype), settings)
    _, parameters = training.with_lora(model, None)
    routing = RoutingStats(model, probe_batches(tokenizer, probe_rows), args.routing_every, ctx.metrics.log)
    trainer = MoleSFTTrainer(model=model, args=config, train_dataset=train_set, eval_dataset=eval_set,
                             processing_class=tokenizer, callbacks=[*training.callbacks(ctx), routing],
                             aux_loss_coef=settings.aux_loss_coef)
    metrics = training.train(ctx, trainer)
    training.save_model(trainer, tokenizer, ctx.output("model"))
    if dist.is_main():
        mole.save_settings(settings, ctx.output("model"))
        if args.merge:
            with training.unpartitioned_loading(trainer):
                mole.export(ctx.output("model"), ctx.output("merged"))
    metrics.update(parameters, train_dialogues=len(train_rows), eval_dialogues=len(eval_rows), tasks=len(tasks),
                   routing_task_distance_start=(routing.first or {}).get("routing/task_distance"),
                   routing_task_distance_end=(routing.last or {}).get("routing/task_distance"),
                   **bad_row_metrics(loaded))
    return metrics


SPEC = StageSpec(
    kind="mole",
    args=Args,
    inputs={
        "model": Input("model", doc="the model the experts are added to (PediatricsGPT: the DFPO model)"),
        "data": Input("data", many=True, doc="task-mixed dialogues; each row's task in `task_field`"),
    },
    outputs={"model": "model", "merged": "merged"},
    optional_outputs=frozenset({"merged"}),
    run=run,
    trainer_config="trl.SFTConfig",
    trainer_defaults={"per_device_train_batch_size": 8, "learning_rate": 2e-4, "num_train_epochs": 1,
                      "max_length": 1024,
                      # trl checkpoints activations by default; reentrant checkpointing would cut the router's
                      # load-balancing loss off from its gradient.
                      "gradient_checkpointing_kwargs": {"use_reentrant": False}},
    doc=__doc__,
)
