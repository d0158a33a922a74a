"""The recipe's `reward:` block → a reward source object, shared by every stage that scores.

Any source whose constructor takes `cache_dir` (the LLM judge) gets run_dir/judge_cache unless the recipe set
one, with this rank as its shard — also when it sits inside another source (a Composite's `sources` list), so
a judge call that was paid for is reused by a re-run, a resumed run or a later stage instead of being bought
again. The cache lives outside the stage folders, so a changed-config re-run keeps it.

Any source whose constructor takes `audit_path` gets the stage's audit log, run_dir/audit/<stage>.rank<r>.jsonl,
where every request that left the machine is recorded without its text (reward.audit): outside the stage
folder, so that a re-run that clears the stage keeps the record, and one file per rank, because appends from
several nodes to one file on a network filesystem are not atomic.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from rlmed.components import KEY, build_component, import_object


def with_judge_caches(spec: Any, cache_dir: Path, shard: str, stage_dir: Path | None = None) -> Any:
    """A copy of the component spec with `cache_dir` (and `cache_shard`) filled in wherever a target takes them,
    and `audit_path`/`audit_stage` where it takes those and a stage folder is given."""
    if isinstance(spec, list):
        return [with_judge_caches(item, cache_dir, shard, stage_dir) for item in spec]
    if not isinstance(spec, dict):
        return spec
    out = {k: with_judge_caches(v, cache_dir, shard, stage_dir) for k, v in spec.items()}
    if isinstance(out.get(KEY), str):
        params = inspect.signature(import_object(out[KEY])).parameters
        if "cache_dir" in params and "cache_dir" not in out:
            out["cache_dir"] = str(cache_dir)
            if "cache_shard" in params:
                out.setdefault("cache_shard", shard)
        if stage_dir is not None and "audit_path" in params and "audit_path" not in out:
            out["audit_path"] = str(cache_dir.parent / "audit" / f"{stage_dir.name}.rank{shard}.jsonl")
            if "audit_stage" in params:
                out.setdefault("audit_stage", stage_dir.name)
    return out


def build_reward_source(reward: dict[str, Any], run_dir: Path, stage_dir: Path | None = None) -> Any:
    from rlmed import dist

    return build_component(with_judge_caches(reward, run_dir / "judge_cache", str(dist.rank()), stage_dir))
