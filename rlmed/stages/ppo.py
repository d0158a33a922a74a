"""Stage `ppo`: PPO with a value model and a frozen reference, against any rlmed reward source (methods.md §4).

HuatuoGPT's alignment step: the policy (input `model`) samples one answer per prompt, the recipe's `reward:`
source scores it (reward model, LLM judge with the doctor's reply as reference, rules, composite, a user's
class), a per-token KL penalty against the reference keeps it close to the input model, and GAE advantages drive
clipped policy and value updates for `ppo_epochs` passes over each rollout. The value model starts from
`inputs.value_model` (HuatuoGPT: the reward model) or, when that is absent, from the policy with a new head.

The `trainer:` block takes transformers.TrainingArguments fields (learning rate, micro-batch, gradient
accumulation, deepspeed, ...); the run's length and checkpoint interval are args, in rollouts. The trainer is
rlmed.rl.ppo_trainer, the math rlmed.rl.ppo_math; how rollouts map onto the Trainer's steps:
docs/architecture.md, "PPO".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlmed.rl.ppo_config import PPOSettings, RolloutSchedule
from rlmed.stages.base import Input, StageContext, StageSpec
from rlmed.stages.online_common import Args as OnlineArgs

# Trainer fields this stage derives from its rollout arguments.
DERIVED_TRAINER_FIELDS = {"max_steps": "num_rollouts", "num_train_epochs": "num_rollouts",
                          "save_steps": "save_every_rollouts", "save_strategy": "save_every_rollouts"}


@dataclass(kw_only=True)
class Args(PPOSettings, OnlineArgs):
    """The PPO settings (rlmed.rl.ppo_config, with their checks) plus what every online-RL stage takes."""


def micro_batching(ctx: StageContext, args: Args) -> RolloutSchedule:
    """The Trainer's steps per rollout, after checking the batch sizes fit together."""
    for key, arg in DERIVED_TRAINER_FIELDS.items():
        if key in ctx.trainer:
            raise ValueError(f"trainer.{key} is derived from args.{arg} in a ppo stage; remove it from trainer: "
                             f"(got trainer.{key}={ctx.trainer[key]!r})")
    return args.schedule(ctx.trainer_setting("per_device_train_batch_size"),
                         ctx.trainer_setting("gradient_accumulation_steps", 1))


def run(ctx: StageContext, inputs: dict[str, Any], args: Args) -> dict[str, Any]:
    from rlmed import dist, training
    from rlmed.data.prepared import DataCache
    from rlmed.rl.sources import build_reward_source
    from rlmed.data.chat import render_prompt
    from rlmed.models.loading import load_causal_lm, load_scalar_head_model, load_tokenizer
    from rlmed.rl.ppo_trainer import PPOTrainer
    from rlmed.stages.online_common import heldout_writer, prompt_rows, reward_counts, save_and_measure

    schedule = micro_batching(ctx, args)
    heldout, train_rows = prompt_rows(inputs, args, ctx.seed, DataCache.for_run(ctx.run_dir))
    source = build_reward_source(ctx.reward, ctx.run_dir, ctx.stage_dir)

    write_heldout = heldout_writer(ctx, args, heldout, source)
    metrics: dict[str, Any] = {}
    if heldout and dist.is_main():
        metrics["heldout_reward_start"] = write_heldout("heldout_start.jsonl", inputs["model"])

    tokenizer = load_tokenizer(inputs["model"])
    prompts = [{"ids": tokenizer(render_prompt(tokenizer, r["prompt"]), add_special_tokens=False)["input_ids"]
                [-args.max_prompt_length:], "messages": r["prompt"], "reference": r["reference"],
                "metadata": r["metadata"]} for r in train_rows]
    # Built before any model loads, so that under ZeRO-3 the loads below are partitioned across ranks.
    config = training.trainer_config(
        ctx, "transformers.TrainingArguments", has_eval=False, per_device_train_batch_size=schedule.micro_batch,
        max_steps=schedule.max_steps, save_steps=schedule.save_steps)
    from transformers import set_seed

    set_seed(ctx.seed)  # a value head started from the policy is initialised randomly: by the seed, not by chance
    attention = args.attn_implementation
    policy = load_causal_lm(inputs["model"], dtype=args.dtype, attn_implementation=attention)
    policy, parameters = training.with_lora(policy, args.lora)
    value_from = inputs.get("value_model") or inputs["model"]
    value_model, _ = training.with_lora(
        load_scalar_head_model(value_from, dtype=args.dtype, pad_token_id=tokenizer.pad_token_id), args.lora,
        task_type="SEQ_CLS")
    reference = None
    if args.lora is None:  # with LoRA the reference is the policy with its adapter disabled: no second copy
        reference = load_causal_lm(inputs["model"], dtype=args.dtype, attn_implementation=attention)
        reference.requires_grad_(False)

    trainer = PPOTrainer(policy=policy, value_model=value_model, ref_model=reference, settings=args,
                         prompts=prompts, reward_source=source, tokenizer=tokenizer, args=config,
                         callbacks=training.callbacks(ctx),
                         sample_sink=lambda rows, step: ctx.metrics.log_table("samples", rows, step))
    metrics.update(training.train(ctx, trainer), **parameters, train_prompts=len(prompts),
                   value_model_from=str(value_from))
    rollouts = [r for r in trainer.state.log_history if "reward_mean" in r]
    if rollouts:
        metrics.update(first_reward_mean=rollouts[0]["reward_mean"], last_reward_mean=rollouts[-1]["reward_mean"],
                       last_kl=rollouts[-1]["kl"], kl_coef=rollouts[-1]["kl_coef"])
    metrics.update(reward_counts(*trainer.run_counts))  # over all ranks
    metrics.update(save_and_measure(ctx, args, trainer, tokenizer, write_heldout if heldout else None))
    return metrics


SPEC = StageSpec(
    kind="ppo",
    args=Args,
    inputs={
        "model": Input("model", doc="the policy to improve; also the frozen KL reference"),
        "prompts": Input("data", many=True, doc="prompts, with the doctor's reply as reference when they have one"),
        "value_model": Input("model", required=False,
                             doc="where the value model starts (HuatuoGPT: the reward model); default: the policy"),
    },
    outputs={"model": "model", "merged": "merged"},
    optional_outputs=frozenset({"merged"}),
    run=run,
    trainer_config="transformers.TrainingArguments",
    trainer_defaults={"per_device_train_batch_size": 8, "learning_rate": 1e-5,
                      "remove_unused_columns": False,  # the rollout batches carry no model-input columns
                      # RL rewards move; a decay to 0 would stop learning by the last rollouts.
                      "lr_scheduler_type": "constant"},
    reward="required",
    doc=__doc__,
)
