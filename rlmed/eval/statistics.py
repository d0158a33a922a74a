"""The evaluate stage's statistics, computed the same way by the stage and by `rlmed report --recompute`.

`add_statistics(results, values, run_dir, stage_id)` fills results.json's `comparisons` (every model against the
baseline, every metric), `breakdowns` (per eval-row field such as `condition`), `benchmarks` (each choice or
benchmark set's score as the benchmark reports it: rlmed.eval.benchmark_scores) and `stage_effects` (what each stage
of the run did) from the models' per-row values, with the settings recorded in results["statistics"] (method,
resamples, confidence, seed, min_rows, breakdown_by, targets) — so a recompute needs nothing but results.json and
the saved generations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from rlmed.eval.benchmark_scores import benchmark_scores
from rlmed.eval.bootstrap import CONFIDENCE, MIN_ROWS, RESAMPLES
from rlmed.eval.comparisons import breakdowns, comparisons
from rlmed.eval.generations import SetValues
from rlmed.eval.stage_effects import stage_effects

METHOD = "paired bootstrap over eval rows (percentile interval)"


def settings(seed: int, breakdown_by: Sequence[str] = ("condition",), targets: dict[str, str] | None = None,
             resamples: int = RESAMPLES) -> dict[str, Any]:
    """results["statistics"]: how every interval in results.json was computed, enough to recompute it."""
    return {"method": METHOD, "resamples": resamples, "confidence": CONFIDENCE, "seed": seed, "min_rows": MIN_ROWS,
            "breakdown_by": list(breakdown_by), "targets": dict(targets or {})}


def add_statistics(results: dict[str, Any], values: dict[str, dict[str, SetValues]], run_dir: Path,
                   stage_id: str) -> dict[str, Any]:
    """`results` with comparisons, breakdowns, benchmarks and stage_effects (re)computed from `values` ({model: {set:
    SetValues}}) and results["statistics"] (a missing section, as in a results.json written before these
    existed, gets the defaults with seed 42)."""
    stats = results.get("statistics")
    if not isinstance(stats, dict):
        stats = settings(42)
    seed, resamples = int(stats.get("seed", 42)), int(stats.get("resamples", RESAMPLES))
    baseline = results.get("baseline")
    if baseline not in values:
        baseline = next(iter(values))
    out = {**results, "statistics": stats}
    out["comparisons"] = comparisons(values, baseline, seed, resamples)
    out["breakdowns"] = breakdowns(values, baseline, stats.get("breakdown_by") or [], seed, resamples)
    out["benchmarks"] = benchmark_scores(results.get("eval_sets") or {}, values, out["comparisons"], seed, resamples)
    out["stage_effects"] = stage_effects(Path(run_dir), stage_id, out, values, seed, resamples,
                                         stats.get("targets") or {})
    return out
