"""Stage `ai_feedback`: HuatuoGPT's RLAIF step (methods.md §3) — sample, score against the doctor's reply, pair.

1. Sample `samples_per_prompt` candidates for every prompt (rows carry the real doctor's reply) with batched HF
   generation, sharded across ranks, or through an OpenAI-compatible endpoint (vLLM, `transformers serve`).
   Candidates are written (candidates.jsonl) before any scoring, so a resumed run scores the same text.
2. Score every candidate with the recipe's `reward:` source (LLM judge, reward model, rules, similarity,
   composite, a user's class). A judge's on-disk cache lives in run_dir/judge_cache, outside the stage folder,
   so what was paid for survives a re-run with changed settings; a resume sends no repeated request.
3. Per prompt, the best and worst scored candidates become a pair when their margin is at least `min_margin`;
   ties and unscored candidates are dropped and counted. scored.jsonl keeps every candidate with its score,
   parts, rationale and usage; pairs.jsonl is pairwise data the reward-model and DPO stages read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from rlmed.artifacts import atomic_write_jsonl, read_jsonl
from rlmed.stages.base import Input, StageContext, StageSpec


@dataclass(kw_only=True)
class Endpoint:
    base_url: str
    """An OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (vLLM, `transformers serve`)."""
    model: str
    """The model name the server serves (sent as `model` in every request)."""
    api_key_env: str | None = None
    """Name of the environment variable holding the key; None for a local server."""
    max_concurrency: int = 16
    """Requests in flight at once, one per sample (>= 1)."""
    deidentify: bool = True
    """Prompts sent to a host other than this machine are de-identified first (reward.deid); false sends them
    unmasked, with a loud warning."""
    deid_patterns: dict[str, str] | None = None
    """Extra or replaced masking patterns, as on a judge."""
    allowed_hosts: list[str] | None = None
    """Non-local hosts this endpoint may reach beyond the one its base_url names (reward.hosts)."""


@dataclass(kw_only=True)
class Args:
    samples_per_prompt: int = 4
    """Candidates sampled per prompt, at least 2 (a pair is the best and the worst); more widen the margin."""
    temperature: float = 1.0
    """Candidates are drawn from softmax(logits / temperature) cut by top_p and nothing else: the model's
    generation_config.json (repetition_penalty, top_k, ...) is not applied (rlmed.sampling)."""
    top_p: float = 0.95
    """Nucleus cut-off (0..1]: drops the improbable tail that makes degenerate candidates; 1 samples everything."""
    max_new_tokens: int = 256
    """Longest candidate, in tokens; a longer answer is cut there and still scored."""
    batch_size: int = 8
    """Prompts per generation batch (each yields samples_per_prompt sequences)."""
    max_prompts: int | None = None
    """Use only the first N prompts (after expanding dialogues into one prompt per doctor turn)."""
    min_margin: float = 0.0
    """A pair needs chosen - rejected >= min_margin (and > 0: ties are dropped)."""
    max_failed_fraction: float = 0.2
    """Fail the stage when more than this share of candidates could not be scored."""
    endpoint: Endpoint | None = None
    """Generate through this server instead of loading the model here."""
    seed: int = 0
    """Sampling seed of local generation; each rank adds its rank, so shards sample differently."""
    dtype: str = "auto"
    """Weights dtype when loading the model here: auto (float32 on CPU), float32, bfloat16, float16."""

    def __post_init__(self) -> None:
        if self.samples_per_prompt < 2:
            raise ValueError(f"samples_per_prompt must be at least 2 to form pairs, got {self.samples_per_prompt}")
        if not 0.0 <= self.max_failed_fraction <= 1.0:
            raise ValueError(f"max_failed_fraction must be within 0..1, got {self.max_failed_fraction}")


def load_prompts(inputs: dict[str, Any], args: Args, seed: int, cache: Any = None) -> list[dict[str, Any]]:
    from rlmed.data.sources import flat_doctor_prompts

    prompts = flat_doctor_prompts(inputs["prompts"], seed, args.max_prompts, cache)
    # A row's own rubric and prompt_id (metadata) travel with its candidates to the reward source.
    return [{"id": f"p{i}", "messages": p.messages, "reference": p.reference,
             **({"metadata": p.metadata} if p.metadata else {})} for i, p in enumerate(prompts)]


def generate_candidates(ctx: StageContext, inputs: dict[str, Any], args: Args,
                        prompts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All ranks generate their share; the main rank merges the shards in prompt order."""
    from rlmed import dist
    from rlmed.generation import generate_hf, generate_endpoint

    mine = prompts[dist.rank()::dist.world_size()]
    if args.endpoint is not None:
        audit = ctx.run_dir / "audit" / f"{ctx.stage_id}.rank{dist.rank()}.jsonl"  # beside the judge's lines
        texts = generate_endpoint(args.endpoint, [p["messages"] for p in mine], args, audit_path=audit,
                                  stage=ctx.stage_id, record_ids=[str(p["id"]) for p in mine])
    else:
        texts = generate_hf(inputs["model"], [p["messages"] for p in mine], args, seed=args.seed + dist.rank())
    rows = [{"prompt_id": p["id"], "sample": j, "prompt": p["messages"], "reference": p["reference"], "completion": t,
             **({"metadata": p["metadata"]} if "metadata" in p else {})}
            for p, samples in zip(mine, texts) for j, t in enumerate(samples)]
    if dist.world_size() == 1:
        return rows
    atomic_write_jsonl(ctx.stage_dir / f"candidates.rank{dist.rank()}.jsonl", rows, private=True)
    dist.barrier()
    if not dist.is_main():
        return []
    merged = [r for rank in range(dist.world_size()) for r in read_jsonl(ctx.stage_dir / f"candidates.rank{rank}.jsonl")]
    order = {p["id"]: i for i, p in enumerate(prompts)}
    return sorted(merged, key=lambda r: (order[r["prompt_id"]], r["sample"]))


def score_candidates(source: Any, candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from reward.base import Sample, score_sync

    samples = [Sample(prompt=c["prompt"], completion=c["completion"], reference=c["reference"],
                      group=c["prompt_id"], metadata=c.get("metadata") or {}) for c in candidates]
    scores = score_sync(source, samples)
    if len(scores) != len(samples):
        raise RuntimeError(f"reward source returned {len(scores)} scores for {len(samples)} samples")
    return [{**c, "score": s.value, "parts": s.parts, "rationale": s.rationale, "error": s.error, "usage": s.usage}
            for c, s in zip(candidates, scores)]


def make_pairs(scored: list[dict[str, Any]], min_margin: float) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Best vs worst scored candidate per prompt; counts of what was dropped and why. An empty answer (the model
    ended at once) is left out of pairing and counted: pairwise data with an empty reply is a bad row to the
    stages that read it."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in scored:
        groups.setdefault(row["prompt_id"], []).append(row)
    pairs, counts = [], {"ties": 0, "below_margin": 0, "too_few_scored": 0, "empty_answers": 0}
    for rows in groups.values():
        counts["empty_answers"] += sum(not r["completion"].strip() for r in rows)
        valid = sorted((r for r in rows if r["score"] is not None and math.isfinite(r["score"])
                        and r["completion"].strip()), key=lambda r: r["score"])
        if len(valid) < 2:
            counts["too_few_scored"] += 1
            continue
        worst, best = valid[0], valid[-1]
        margin = best["score"] - worst["score"]
        if margin <= 0 or best["completion"].strip() == worst["completion"].strip():
            counts["ties"] += 1
        elif margin < min_margin:
            counts["below_margin"] += 1
        else:
            pairs.append({"messages": best["prompt"], "chosen": best["completion"], "rejected": worst["completion"],
                          "chosen_score": best["score"], "rejected_score": worst["score"], "margin": margin,
                          "reference": best["reference"], "prompt_id": best["prompt_id"]})
    return pairs, counts


def summary(scored: list[dict[str, Any]], pairs: list[dict[str, Any]], counts: dict[str, int],
            source: Any) -> dict[str, Any]:
    values = [r["score"] for r in scored if r["score"] is not None]
    failed = len(scored) - len(values)
    out: dict[str, Any] = {"candidates": len(scored), "scored": len(values), "failed_scores": failed,
                           "failed_fraction": failed / max(1, len(scored)), "pairs": len(pairs), **counts}
    if values:
        lo, hi = min(values), max(values)
        mean = sum(values) / len(values)
        out.update(score_mean=mean, score_min=lo, score_max=hi,
                   score_std=math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)))
        width = (hi - lo) / 10 or 1.0
        histogram = [0] * 10
        for v in values:
            histogram[min(9, int((v - lo) / width))] += 1
        out["score_histogram"] = {"low": lo, "high": hi, "counts": histogram}
    stats = getattr(source, "stats", None)
    if stats is not None and hasattr(stats, "as_dict"):
        out["judge"] = stats.as_dict()
    errors = [r["error"] for r in scored if r["error"]]
    if errors:
        out["first_errors"] = errors[:5]
    return out


def run(ctx: StageContext, inputs: dict[str, Any], args: Args) -> dict[str, Any]:
    from rlmed import dist
    from rlmed.data.prepared import DataCache
    from rlmed.rl.sources import build_reward_source

    prompts = load_prompts(inputs, args, ctx.seed, DataCache.for_run(ctx.run_dir))
    candidates_file = ctx.output("candidates")
    if ctx.resume and candidates_file.exists():
        ctx.log.info("resuming: scoring the candidates already in %s", candidates_file)
        candidates = read_jsonl(candidates_file) if dist.is_main() else []
    else:
        candidates = generate_candidates(ctx, inputs, args, prompts)
        if dist.is_main():
            atomic_write_jsonl(candidates_file, candidates, private=True)
    if not dist.is_main():
        return {}  # scoring is I/O-bound and concurrent inside the source; the main rank does it
    ctx.log.info("scoring %d candidates of %d prompts", len(candidates), len(prompts))
    source = build_reward_source(ctx.reward, ctx.run_dir, ctx.stage_dir)
    scored = score_candidates(source, candidates)
    atomic_write_jsonl(ctx.output("scored"), scored, private=True)
    pairs, counts = make_pairs(scored, args.min_margin)
    atomic_write_jsonl(ctx.output("pairs"), pairs, private=True)
    metrics = summary(scored, pairs, counts, source)
    if args.endpoint is not None:
        from rlmed.generation import endpoint_record

        metrics["endpoint"] = endpoint_record(args.endpoint)
    ctx.metrics.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    if metrics["failed_fraction"] > args.max_failed_fraction:
        raise RuntimeError(f"{metrics['failed_scores']} of {len(scored)} candidates could not be scored "
                           f"(more than max_failed_fraction={args.max_failed_fraction}); first errors: "
                           f"{metrics.get('first_errors')}; scored.jsonl has them all")
    return metrics


SPEC = StageSpec(
    kind="ai_feedback",
    args=Args,
    inputs={
        "model": Input("model", doc="the policy that samples candidates (unused when args.endpoint is set)"),
        "prompts": Input("data", many=True, doc="doctor dialogues: prompts with the real doctor's reply"),
    },
    outputs={"candidates": "candidates.jsonl", "scored": "scored.jsonl", "pairs": "pairs.jsonl"},
    run=run,
    reward="required",
    doc=__doc__,
)
