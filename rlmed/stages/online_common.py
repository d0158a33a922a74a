"""What the online-RL stages (`grpo`, `rloo`, and `ppo` for its prompts and held-out measurement) share as stages.

A helper module, not a stage: it declares no SPEC (stage kinds are looked up in rlmed.stages.BUILTIN).

The recipe's `reward:` source (judge, reward model, rules, similarity, composite, a user's class) is adapted to
trl's reward-function signature (rlmed.rl.rewards); each row's doctor reply reaches it as the sample's
reference (a dataset column trl passes through). A sample the source could not score is None: trl leaves it out
of the update, rlmed counts it, and the stage fails at the first reward call after which more than
`max_failed_fraction` of the run's samples went unscored.

With `heldout_prompts`, the first N prompts are kept out of training; one answer per held-out prompt is sampled
(seeded) before and after training, written to heldout_start.jsonl / heldout_end.jsonl and scored with the same
source, so the manifest shows whether the reward on unseen prompts rose.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from rlmed.models.lora import ModelArgs
from rlmed.rl.rewards import check_max_failed_fraction
from rlmed.stages.base import Input, StageContext, StageSpec


@dataclass(kw_only=True)
class Args(ModelArgs):
    max_prompts: int | None = None
    """Use only the first N prompts (after expanding dialogues into one prompt per doctor turn)."""
    heldout_prompts: int = 0
    """Prompts kept out of training to measure the reward before and after."""
    heldout_max_new_tokens: int = 64
    """Longest held-out answer, in tokens; the same cap before and after training, so the two rewards compare."""
    max_failed_fraction: float = 0.2
    """Fail the run once more than this share (0..1) of its samples went unscored: a reward source that mostly
    fails would otherwise train on the few samples it happened to score."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_max_failed_fraction(self.max_failed_fraction)


def sample_and_score(model_dir: str, prompts: list[dict[str, Any]], args: Args, source: Any,
                     seed: int) -> list[dict[str, Any]]:
    """One seeded answer per prompt from the model in `model_dir`, with its score."""
    from types import SimpleNamespace

    from reward.base import Sample, score_sync
    from rlmed.generation import generate_hf

    settings = SimpleNamespace(samples_per_prompt=1, temperature=1.0, top_p=1.0, batch_size=8,
                               max_new_tokens=args.heldout_max_new_tokens, dtype=args.dtype)
    answers = [a[0] for a in generate_hf(model_dir, [p["prompt"] for p in prompts], settings, seed=seed)]
    scores = score_sync(source, [Sample(prompt=p["prompt"], completion=a, reference=p["reference"],
                                        metadata=p["metadata"]) for p, a in zip(prompts, answers)])
    return [{"prompt": p["prompt"], "completion": a, "score": s.value} for p, a, s in zip(prompts, answers, scores)]


def _mean_score(rows: list[dict[str, Any]]) -> float | None:
    values = [r["score"] for r in rows if r["score"] is not None]
    return sum(values) / len(values) if values else None


def heldout_writer(ctx: StageContext, args: Args, heldout: list[dict[str, Any]], source: Any) -> Any:
    """A function (file name, model folder) -> mean score that samples the held-out prompts with that model,
    scores them and writes them to the stage folder."""
    from rlmed.artifacts import atomic_write_jsonl

    def write(name: str, model_dir: str) -> float | None:
        scored = sample_and_score(model_dir, heldout, args, source, seed=ctx.seed)
        atomic_write_jsonl(ctx.stage_dir / name, scored, private=True)
        return _mean_score(scored)

    return write


def prompt_rows(inputs: dict[str, Any], args: Args, seed: int, cache: Any = None) -> tuple[list[dict], list[dict]]:
    """The prompts ({prompt, reference, metadata}) in file order, split into held-out and training rows. The
    metadata (a row's own rubric and prompt_id) reaches the reward source with each sample."""
    from rlmed.data.sources import flat_doctor_prompts

    rows = [{"prompt": p.messages, "reference": p.reference, "metadata": p.metadata}
            for p in flat_doctor_prompts(inputs["prompts"], seed, args.max_prompts, cache)]
    if len(rows) <= args.heldout_prompts:
        raise ValueError(f"{len(rows)} prompts, but heldout_prompts={args.heldout_prompts} leaves none to train on")
    return rows[: args.heldout_prompts], rows[args.heldout_prompts:]


def make_run(trainer_path: str, config_path: str) -> Any:
    """The stage's run function, training with the trl trainer at `trainer_path` (GRPO or RLOO)."""

    def run(ctx: StageContext, inputs: dict[str, Any], args: Args) -> dict[str, Any]:
        return _run(ctx, inputs, args, trainer_path, config_path)

    return run


def _run(ctx: StageContext, inputs: dict[str, Any], args: Args, trainer_path: str,
         config_path: str) -> dict[str, Any]:
    from datasets import Dataset

    from rlmed import dist, training
    from rlmed.data.prepared import DataCache
    from rlmed.components import import_object
    from rlmed.models.loading import load_causal_lm, load_tokenizer
    from rlmed.rl.rewards import RewardCounter, UnscoredGate, checked_after_rewards, trl_reward
    from rlmed.rl.sources import build_reward_source

    heldout, train_rows = prompt_rows(inputs, args, ctx.seed, DataCache.for_run(ctx.run_dir))
    source = build_reward_source(ctx.reward, ctx.run_dir, ctx.stage_dir)
    counter = RewardCounter()
    # trl scores each rank's own completions, so the counter holds this rank's share: the gate and the manifest
    # take the run's (summed after every reward call), which also gives every rank the same decision.
    gate = UnscoredGate(counter, args.max_failed_fraction)

    write_heldout = heldout_writer(ctx, args, heldout, source)
    metrics: dict[str, Any] = {}
    if heldout and dist.is_main():
        metrics["heldout_reward_start"] = write_heldout("heldout_start.jsonl", inputs["model"])

    tokenizer = load_tokenizer(inputs["model"])
    config = training.trainer_config(ctx, config_path, has_eval=False)
    model = load_causal_lm(inputs["model"], dtype=args.dtype, attn_implementation=args.attn_implementation)
    model, parameters = training.with_lora(model, args.lora)
    name = ctx.reward["_component_"].rsplit(".", 1)[-1]
    trainer_cls = checked_after_rewards(import_object(trainer_path), gate)
    # trl hands every extra column to the reward function; metadata goes as JSON text, since Arrow would make
    # one struct type of all rows' metadata (and fail on a prompt_id that is a number in one row, text in another).
    dataset = Dataset.from_list([{**r, "metadata": json.dumps(r["metadata"], ensure_ascii=False)} for r in train_rows])
    trainer = trainer_cls(model=model, args=config, train_dataset=dataset,
                          reward_funcs=[trl_reward(source, name, counter)], processing_class=tokenizer,
                          callbacks=training.callbacks(ctx))
    # trl's GenerationConfig leaves fields unset (min_p, no_repeat_ngram_size, bad_words_ids, ...) that generate
    # would fill from the model's generation_config.json; neutralised while training, restored before saving.
    from rlmed.sampling import neutral_model_defaults

    with neutral_model_defaults(model):
        metrics.update(training.train(ctx, trainer), **parameters, train_prompts=len(train_rows))
    metrics.update(reward_counts(*gate.run_counts))  # as of the last reward call: every count there is
    metrics.update(save_and_measure(ctx, args, trainer, tokenizer, write_heldout if heldout else None))
    return metrics


def reward_counts(total: int, unscored: int) -> dict[str, int]:
    """The manifest's reward counts, from the run's (all ranks') total and unscored samples."""
    return {"rewards_scored": total - unscored, "rewards_unscored": unscored}


def save_and_measure(ctx: StageContext, args: Args, trainer: Any, tokenizer: Any,
                     write_heldout: Any | None) -> dict[str, Any]:
    """Save the trained model (and its merged copy), then, with held-out prompts, sample and score them with it."""
    from rlmed import dist, training

    training.save_model(trainer, tokenizer, ctx.output("model"), ctx.output("merged") if args.merge else None)
    if write_heldout is None or not dist.is_main():
        return {}
    with training.unpartitioned_loading(trainer):  # an adapter folder loads like a full model
        return {"heldout_reward_end": write_heldout("heldout_end.jsonl", str(ctx.output("model")))}


def make_spec(kind: str, trainer_path: str, config_path: str, doc: str) -> StageSpec:
    """The StageSpec of an online-RL stage that trains with the trl trainer at `trainer_path`."""
    return StageSpec(
        kind=kind,
        args=Args,
        inputs={
            "model": Input("model", doc="the policy to improve (also the reference when trainer.beta > 0)"),
            "prompts": Input("data", many=True, doc="prompts, with the doctor's reply as reference when they have one"),
        },
        outputs={"model": "model", "merged": "merged"},
        optional_outputs=frozenset({"merged"}),
        run=make_run(trainer_path, config_path),
        trainer_config=config_path,
        trainer_defaults={"per_device_train_batch_size": 8, "learning_rate": 1e-6, "num_train_epochs": 1},
        reward="required",
        doc=doc,
    )
