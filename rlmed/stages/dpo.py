"""Stage `dpo`: trl's DPOTrainer on preference pairs, and DFPO when `nll_weight` (μ) > 0 (methods.md §5).

PediatricsGPT's "direct following preference optimization" adds to the DPO loss the chosen answer's
length-normalised NLL, μ · -(1/|y_w|) Σ_t log π(y_w,t) (rlmed.rl.dfpo_trainer). Every trl loss type stays
available (`trainer.loss_type`, `trainer.beta`, ...). The reference is the input model (trl keeps a frozen
copy, prepared for ZeRO-3 when training is), or with LoRA the same model with its adapter disabled;
`precompute_ref: true` computes the reference log-probs once before training and frees the reference.
trl logs reward margins, accuracies and chosen/rejected log-probs; held-out pairs give the same as eval_*.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlmed.models.lora import ModelArgs
from rlmed.stages.base import Input, StageContext, StageSpec


@dataclass(kw_only=True)
class Args(ModelArgs):
    nll_weight: float = 0.0
    """μ, the weight of the chosen answer's length-normalised NLL: > 0 is DFPO, 0 plain DPO."""
    precompute_ref: bool = False
    """Compute the reference log-probs once, before training (trl's precompute_ref_log_probs)."""
    validation_fraction: float = 0.1
    """Share of pairs held out for eval reward accuracy and margins (0: none)."""
    num_samples: int | None = None
    """Pairs after mixing; None: every pair once."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.nll_weight < 0:
            raise ValueError(f"nll_weight must be >= 0, got {self.nll_weight}")
        if not 0.0 <= self.validation_fraction < 0.5:
            raise ValueError(f"validation_fraction must be within 0..0.5, got {self.validation_fraction}")


def trl_columns(pairs: list[Any]) -> dict[str, list]:
    """Pairs as the columns of trl's conversational preference format (prompt messages; chosen/rejected
    assistant turns)."""
    rows = [p.as_trl() for p in pairs]
    return {key: [row[key] for row in rows] for key in ("prompt", "chosen", "rejected")}


def conversational(pairs: Any, cache: Any = None) -> Any:
    """A Dataset of :func:`trl_columns`: from prepared pairs (ArrowItems) a cached map, memory-mapped."""
    from datasets import Dataset

    from rlmed.data.prepared import ArrowItems, cached_map

    if cache is not None and isinstance(pairs, ArrowItems):
        return cached_map(cache, "pairs", pairs, trl_columns, {"columns": "trl-conversational-1"}, None,
                          desc="preference pairs")
    return Dataset.from_dict(trl_columns(list(pairs)))


def run(ctx: StageContext, inputs: dict[str, Any], args: Args) -> dict[str, Any]:
    from rlmed import training
    from rlmed.data.prepared import DataCache
    from rlmed.data.sources import bad_row_metrics, load_sources, pair
    from rlmed.models.loading import load_causal_lm, load_tokenizer
    from rlmed.rl.dfpo_trainer import DFPOTrainer

    if "precompute_ref_log_probs" in ctx.trainer:
        raise ValueError("set args.precompute_ref instead of trainer.precompute_ref_log_probs, got "
                         f"trainer.precompute_ref_log_probs={ctx.trainer['precompute_ref_log_probs']!r}")
    cache = DataCache.for_run(ctx.run_dir)
    loaded = load_sources(inputs["pairs"], pair, seed=ctx.seed, total=args.num_samples, cache=cache)
    n_eval = int(len(loaded.items) * args.validation_fraction)
    train_pairs, eval_pairs = loaded.items[n_eval:], loaded.items[:n_eval]
    tokenizer = load_tokenizer(inputs["model"])
    config = training.trainer_config(ctx, "trl.DPOConfig", has_eval=bool(eval_pairs),
                                     precompute_ref_log_probs=args.precompute_ref)
    # The config first: under ZeRO-3 the policy (and trl's reference copy) load partitioned.
    model = load_causal_lm(inputs["model"], dtype=args.dtype, attn_implementation=args.attn_implementation)
    model, parameters = training.with_lora(model, args.lora)
    trainer = DFPOTrainer(model=model, args=config, train_dataset=conversational(train_pairs, cache),
                          eval_dataset=conversational(eval_pairs, cache) if eval_pairs else None,
                          processing_class=tokenizer, callbacks=training.callbacks(ctx), nll_weight=args.nll_weight)
    if args.lora is not None and "ref" in trainer.model.peft_config:
        # trl keeps a copy of an adapter it is handed as the reference ("ref") and would save it with the model.
        # Ours is fresh (LoRA's B starts at 0), so the adapter-disabled model is that same reference, without a copy.
        trainer.model.delete_adapter("ref")
    metrics = training.train(ctx, trainer)
    training.save_model(trainer, tokenizer, ctx.output("model"), ctx.output("merged") if args.merge else None)
    return {**metrics, **parameters, "train_pairs": len(train_pairs), "eval_pairs": len(eval_pairs),
            "objective": "dfpo" if args.nll_weight else "dpo", **bad_row_metrics(loaded)}


SPEC = StageSpec(
    kind="dpo",
    args=Args,
    inputs={
        "model": Input("model", doc="the policy to align; also the frozen reference"),
        "pairs": Input("data", many=True, doc="preference pairs: ai_feedback's pairs.jsonl or any pairwise rows"),
    },
    outputs={"model": "model", "merged": "merged"},
    optional_outputs=frozenset({"merged"}),
    run=run,
    trainer_config="trl.DPOConfig",
    trainer_defaults={"per_device_train_batch_size": 8, "learning_rate": 5e-7, "num_train_epochs": 1},
    doc=__doc__,
)
