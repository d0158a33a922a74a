"""Stage `rubrics`: an LLM writes a rubric for every doctor prompt, for people to read and edit before use (RaR).

For each prompt (doctor dialogues, one prompt per doctor turn, the doctor's reply as reference) the `writer`
(a `reward.rubric.RubricJudge`, or any object with its async `write_rubrics`) writes `min_items`..`max_items`
items in RaR's categories, grounded in the doctor's reply: Essential (5..10 points), Important (3..4), Optional
(1..2), Pitfall (-10..-1, a mistake the answer must not make), each tagged `category:<name>`. A reply that does
not validate (item count, empty criterion, unknown category, points outside the band) is asked again within the
writer's parse budget, then leaves its prompt without a rubric, counted and named in the manifest: nothing is
made up. Requests are cached in run_dir/judge_cache, so a re-run pays for nothing twice.

rubrics.jsonl holds one row per distinct prompt, `{"prompt_id", "prompt", "reference", "rubrics": [{criterion,
points, tags}]}` (HealthBench's item layout; prompt_id = reward.rubric.prompt_key(prompt)), written 0600 since
it holds patient text. A RubricJudge given this file (`rubrics: $<id>.rubrics`) finds each sample's rubric by
that key, so any stage's samples of these prompts join without ids. Runs on the main rank (the work is
requests, concurrent inside the writer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlmed.stages.base import Input, StageContext, StageSpec


@dataclass(kw_only=True)
class Args:
    writer: dict[str, Any]
    """The rubric writer, a component: {_component_: reward.rubric.RubricJudge, model: ..., base_url: ...,
    api_key_env: ...} with any of the judge's settings (language, limits, prices, de-identification, hosts)."""
    min_items: int = 7
    """Fewest items a rubric may have (RaR writes 7-20)."""
    max_items: int = 20
    """Most items a rubric may have."""
    max_tokens: int = 2048
    """Longest writer reply, in tokens; a reply cut off here is not a rubric."""
    max_prompts: int | None = None
    """Write rubrics for the first N prompts only (after expanding dialogues into one prompt per doctor turn)."""
    max_failed_fraction: float = 0.2
    """Fail the stage when more than this share (0..1) of prompts got no rubric."""

    def __post_init__(self) -> None:
        from rlmed.components import KEY, check_component, import_object, is_component

        if not is_component(self.writer):
            raise ValueError(f"writer must be a component, e.g. {{_component_: reward.rubric.RubricJudge, model: "
                             f"gpt-4o, base_url: https://...}}, got {self.writer!r}")
        problems = check_component(self.writer)
        if problems:
            raise ValueError("writer: " + "; ".join(problems))
        if not callable(getattr(import_object(self.writer[KEY]), "write_rubrics", None)):
            raise ValueError(f"writer: {self.writer[KEY]} cannot write rubrics (no write_rubrics method); use "
                             f"reward.rubric.RubricJudge")
        if not 1 <= self.min_items <= self.max_items:
            raise ValueError(f"need 1 <= min_items <= max_items, got min_items={self.min_items}, "
                             f"max_items={self.max_items}")
        if not 0.0 <= self.max_failed_fraction <= 1.0:
            raise ValueError(f"max_failed_fraction must be within 0..1, got {self.max_failed_fraction}")


def distinct_prompts(inputs: dict[str, Any], args: Args, seed: int,
                     cache: Any = None) -> tuple[list[dict[str, Any]], int, int]:
    """The prompts in file order, one per prompt_key (the first doctor reply wins), how many repeats were
    dropped (one rubric per prompt is what a join by prompt can use), and how many were left out because their
    row has its own rubric (which the reward source reads first, so a written one would never be used)."""
    from reward.rubric import prompt_key
    from rlmed.data.sources import flat_doctor_prompts

    prompts = flat_doctor_prompts(inputs["prompts"], seed, args.max_prompts, cache)
    own = 0
    rows: dict[str, dict[str, Any]] = {}
    for p in prompts:
        if p.metadata.get("rubrics") is not None:
            own += 1
            continue
        rows.setdefault(prompt_key(p.messages), {"prompt": p.messages, "reference": p.reference})
    return [{"prompt_id": key, **row} for key, row in rows.items()], len(prompts) - own - len(rows), own


def run(ctx: StageContext, inputs: dict[str, Any], args: Args) -> dict[str, Any]:
    import asyncio

    from rlmed.artifacts import atomic_write_jsonl
    from rlmed.data.prepared import DataCache
    from rlmed.rl.sources import build_reward_source

    prompts, repeated, own = distinct_prompts(inputs, args, ctx.seed, DataCache.for_run(ctx.run_dir))
    if own:
        ctx.log.info("%d prompts have their own rubric in the data and get none written", own)
    writer = build_reward_source(args.writer, ctx.run_dir, ctx.stage_dir)  # gets the judge cache and audit log
    ctx.log.info("writing rubrics for %d prompts with %r", len(prompts), writer)

    async def write() -> list[Any]:
        try:
            return await writer.write_rubrics([(p["prompt"], p["reference"]) for p in prompts],
                                              min_items=args.min_items, max_items=args.max_items,
                                              max_tokens=args.max_tokens)
        finally:
            if hasattr(writer, "aclose"):
                await writer.aclose()

    written = asyncio.run(write())
    rows = [{**p, "rubrics": [item.as_row() for item in w.items]}
            for p, w in zip(prompts, written) if w.items is not None]
    atomic_write_jsonl(ctx.output("rubrics"), rows, private=True)

    failed = [(p["prompt_id"], w.error) for p, w in zip(prompts, written) if w.items is None]
    sizes = [len(w.items) for w in written if w.items is not None]
    categories: dict[str, int] = {}
    for w in written:
        for item in w.items or ():
            for tag in item.tags:
                categories[tag] = categories.get(tag, 0) + 1
    metrics: dict[str, Any] = {
        "prompts": len(prompts), "repeated_prompts": repeated, "own_rubrics": own, "written": len(rows),
        "failed": len(failed),
        "failed_fraction": len(failed) / max(1, len(prompts)),
        "items_per_prompt_mean": sum(sizes) / len(sizes) if sizes else 0.0,
        "items_min": min(sizes, default=0), "items_max": max(sizes, default=0), "items_by_tag": categories,
    }
    stats = getattr(writer, "stats", None)
    if stats is not None and hasattr(stats, "as_dict"):
        metrics["judge"] = stats.as_dict()
    if failed:
        metrics["first_errors"] = [f"{key}: {error}" for key, error in failed[:5]]
    ctx.metrics.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    if metrics["failed_fraction"] > args.max_failed_fraction:
        raise RuntimeError(f"{len(failed)} of {len(prompts)} prompts got no rubric (more than max_failed_fraction="
                           f"{args.max_failed_fraction}); first errors: {metrics['first_errors']}")
    return metrics


SPEC = StageSpec(
    kind="rubrics",
    args=Args,
    inputs={"prompts": Input("data", many=True, doc="doctor dialogues: prompts with the real doctor's reply")},
    outputs={"rubrics": "rubrics.jsonl"},
    run=run,
    ranks="main",
    doc=__doc__,
)
