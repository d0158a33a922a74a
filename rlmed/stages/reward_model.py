"""Stage `reward_model`: a scalar reward model trained on preference pairs with trl's RewardTrainer.

Loss `-log σ(r(x, y_chosen) - r(x, y_rejected))` (methods.md §3). Pairs come from `ai_feedback` or a user's
pairwise file in any supported shape; multi-turn prompts are kept. Each side is rendered exactly as
`reward.model.RewardModel` renders it when scoring (the chat template over prompt + answer), so training and
scoring read the same text. After training, the saved folder is loaded as a `RewardModel` and scored on the
held-out pairs: pairwise accuracy and mean margin go to the manifest, and `min_accuracy` stops the pipeline
here when the model did not learn enough to be worth a PPO run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlmed.models.lora import ModelArgs
from rlmed.stages.base import Input, StageContext, StageSpec


@dataclass(kw_only=True)
class Args(ModelArgs):
    validation_fraction: float = 0.1
    """Share of pairs held out for accuracy and margin (0: none, no gate)."""
    min_accuracy: float | None = None
    """Fail the stage when held-out pairwise accuracy is below this (0..1)."""
    num_samples: int | None = None
    """Pairs after mixing; None: every pair once."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.validation_fraction < 0.5:
            raise ValueError(f"validation_fraction must be within 0..0.5, got {self.validation_fraction}")
        if self.min_accuracy is not None and not 0.0 <= self.min_accuracy <= 1.0:
            raise ValueError(f"min_accuracy must be within 0..1, got {self.min_accuracy}")
        if self.min_accuracy is not None and self.validation_fraction == 0:
            raise ValueError(f"min_accuracy needs held-out pairs: set validation_fraction above 0, got "
                             f"min_accuracy={self.min_accuracy}, validation_fraction={self.validation_fraction}")


def side_ids(tokenizer: Any, prompt: list[dict], answer: str) -> list[int]:
    """Token ids of prompt + answer as the reward model reads them (see reward.model.RewardModel.render)."""
    text = tokenizer.apply_chat_template(list(prompt) + [{"role": "assistant", "content": answer}], tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def held_out_metrics(model_dir: str, pairs: list[Any]) -> dict[str, float]:
    """Accuracy (chosen scored above rejected) and mean margin of the saved model on held-out pairs."""
    from reward.base import Sample
    from reward.model import RewardModel

    scorer = RewardModel(model_dir, batch_size=16, device="cpu")
    samples = [Sample(prompt=p.prompt, completion=c) for p in pairs for c in (p.chosen, p.rejected)]
    values = scorer.score_batch_sync(samples)
    margins = [values[i] - values[i + 1] for i in range(0, len(values), 2)]
    return {"eval_pairwise_accuracy": sum(m > 0 for m in margins) / len(margins),
            "eval_mean_margin": sum(margins) / len(margins), "eval_pairs": len(margins)}


def run(ctx: StageContext, inputs: dict[str, Any], args: Args) -> dict[str, Any]:
    from datasets import Dataset
    from trl import RewardTrainer

    from rlmed import dist, training
    from rlmed.data.prepared import ArrowItems, DataCache, cached_map
    from rlmed.data.sources import bad_row_metrics, load_sources, pair
    from rlmed.data.tokenized import tokenizer_hash
    from rlmed.models.loading import load_scalar_head_model, load_tokenizer

    cache = DataCache.for_run(ctx.run_dir)
    loaded = load_sources(inputs["pairs"], pair, seed=ctx.seed, total=args.num_samples, cache=cache)
    n_eval = int(len(loaded.items) * args.validation_fraction)
    train_pairs, eval_pairs = loaded.items[n_eval:], loaded.items[:n_eval]
    tokenizer = load_tokenizer(inputs["model"])

    def columns(pairs: list[Any]) -> dict[str, list[list[int]]]:
        return {"chosen_ids": [side_ids(tokenizer, p.prompt, p.chosen) for p in pairs],
                "rejected_ids": [side_ids(tokenizer, p.prompt, p.rejected) for p in pairs]}

    def tokenized(pairs: Any) -> Any:
        if isinstance(pairs, ArrowItems):  # prepared: a cached map, memory-mapped
            return cached_map(cache, "tokens", pairs, columns,
                              {"tokenizer": tokenizer_hash(tokenizer), "columns": "reward-sides-1"}, None,
                              desc="tokenising pairs")
        return Dataset.from_dict(columns(list(pairs)))

    config = training.trainer_config(ctx, "trl.RewardConfig", has_eval=bool(eval_pairs))
    # The shared loader: a LoRA input (or chain) merges into the backbone and names the model after its folder, so
    # a LoRA reward model records a base that reloads with that training; a MoLE input is refused clearly.
    model = load_scalar_head_model(inputs["model"], dtype=args.dtype, pad_token_id=tokenizer.pad_token_id,
                                   attn_implementation=args.attn_implementation)
    model, parameters = training.with_lora(model, args.lora, task_type="SEQ_CLS")  # SEQ_CLS: the head trains too
    trainer = RewardTrainer(model=model, args=config, train_dataset=tokenized(train_pairs),
                            eval_dataset=tokenized(eval_pairs) if eval_pairs else None,
                            processing_class=tokenizer, callbacks=training.callbacks(ctx))
    metrics = training.train(ctx, trainer)
    training.save_model(trainer, tokenizer, ctx.output("model"), ctx.output("merged") if args.merge else None,
                        scalar_head=True)
    metrics.update(parameters, train_pairs=len(train_pairs), **bad_row_metrics(loaded))
    if eval_pairs and dist.is_main():
        scored_dir = ctx.output("merged") if args.merge else ctx.output("model")
        with training.unpartitioned_loading(trainer):
            held_out = held_out_metrics(str(scored_dir), eval_pairs)
        metrics.update(held_out)
        ctx.metrics.log(held_out, step=metrics.get("global_step"))
        accuracy = held_out.get("eval_pairwise_accuracy")
        if args.min_accuracy is not None and accuracy is not None and accuracy < args.min_accuracy:
            raise RuntimeError(f"held-out pairwise accuracy {accuracy:.3f} on {len(eval_pairs)} pairs is below "
                               f"min_accuracy={args.min_accuracy}; the model is saved in {ctx.output('model')} "
                               f"for inspection, and later stages will not run on it")
    return metrics


SPEC = StageSpec(
    kind="reward_model",
    args=Args,
    inputs={
        "model": Input("model", doc="the model to start from (HuatuoGPT: the SFT model); a scalar head is added"),
        "pairs": Input("data", many=True, doc="preference pairs: ai_feedback's pairs.jsonl or any pairwise rows"),
    },
    outputs={"model": "model", "merged": "merged"},
    optional_outputs=frozenset({"merged"}),
    run=run,
    trainer_config="trl.RewardConfig",
    trainer_defaults={"per_device_train_batch_size": 8, "learning_rate": 1e-5, "num_train_epochs": 1},
    doc=__doc__,
)
