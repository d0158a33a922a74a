"""`rlmed report <run_dir> --recompute`: the evaluate stages' metrics recomputed from their saved generations.

For every evaluate stage of the run: read generations/<model>.jsonl of each model in results.json, recompute
the text / choice / hit-rate metrics with rlmed.eval.generations (the functions the stage itself uses, on the
same rows), the reward means and part means from the scores saved in the rows, and the comparisons, breakdowns,
benchmark scores and stage effects with rlmed.eval.statistics (the same draws: results.json records their seed);
replace those sections of results.json (written atomically), and re-render report.md. Nothing is generated, so an
edited answer, a corrected reference or a fixed metric costs seconds, not a GPU run.

Kept as they are, and said so in the log and the report: the reward *scores* (re-scoring needs the reward
source, and a saved score belongs to the answer it scored, which may have been edited), `pairwise` (needs the
judge) and `contamination` (needs the training data). Every stage is checked and computed before any file is
written, so a broken generations file leaves the whole run as it was. manifest.json and tables/*.jsonl keep
the stage's values.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rlmed.artifacts import atomic_write_json
from rlmed.eval.generations import (GENERATIONS, GenerationsError, model_values, read_generations, set_kinds,
                                    summarise_model)
from rlmed.eval.report import RESULTS, ReportError, evaluate_stages, load_results, model_names, render_report
from rlmed.eval.statistics import add_statistics

logger = logging.getLogger(__name__)

KEPT_SECTIONS = ("reward", "pairwise", "contamination")  # what cannot be recomputed from the generations alone


def _check_sets(path: Path, rows: list[dict[str, Any]], kinds: dict[str, str], eval_sets: dict[str, Any]) -> None:
    """The file answers every row of every eval set results.json lists, once, with the kind it lists: a
    truncated or hand-merged file would otherwise give metrics over a different set of rows."""
    for name, kind in kinds.items():
        info = eval_sets.get(name)
        if eval_sets and not isinstance(info, dict):
            raise GenerationsError(f"{path}: eval set '{name}' is not in {RESULTS}'s eval_sets "
                                   f"({', '.join(eval_sets)}); the file belongs to another run or stage")
        if isinstance(info, dict) and info.get("kind") not in (None, kind):
            raise GenerationsError(f"{path}: eval set '{name}' has {kind} rows, but {RESULTS} says "
                                   f"{info.get('kind')}")
        indices = sorted(r["index"] for r in rows if r["set"] == name)
        expected = info.get("rows") if isinstance(info, dict) else None
        if indices != list(range(len(indices))) or (isinstance(expected, int) and len(indices) != expected):
            raise GenerationsError(f"{path}: eval set '{name}' has row indices {_short(indices)}; expected each of "
                                   f"0..{(expected if isinstance(expected, int) else len(indices)) - 1} once")


def _short(values: list[int]) -> str:
    return str(values) if len(values) <= 12 else f"{values[:12]}"[:-1] + f", ... ({len(values)} in all)]"


def recompute_results(stage_dir: Path, results: dict[str, Any] | None = None) -> dict[str, Any]:
    """results.json of one evaluate stage (`results`: it as already read) with `metrics`, the reward means (where
    the rows carry scores), `comparisons`, `breakdowns` and `stage_effects` recomputed from generations/ (nothing
    written); ReportError naming the file (and line) at fault."""
    stage_dir = Path(stage_dir)
    if results is None:
        results = load_results(stage_dir / RESULTS)
    models = list(results["models"]) or model_names(results)
    values = {}
    scored = False
    for model in models:
        path = stage_dir / GENERATIONS / f"{model}.jsonl"
        try:
            rows = read_generations(path)
            kinds = set_kinds(rows, str(path))
            _check_sets(path, rows, kinds, results["eval_sets"])
            listed = [s for s in results["eval_sets"] if s in kinds]  # metrics in results.json's set order
            kinds = {s: kinds[s] for s in [*listed, *(s for s in kinds if s not in listed)]}
            values[model] = model_values(rows, kinds, str(path))
            scored = scored or any("reward" in r for r in rows)
        except GenerationsError as exc:
            raise ReportError(str(exc)) from None
    summaries = {model: summarise_model(v) for model, v in values.items()}
    kept = [section for section in KEPT_SECTIONS if results[section]]
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    out = {**results, "metrics": {model: m for model, (m, _) in summaries.items()},
           "recomputed": {"at": when, "from": f"{GENERATIONS}/<model>.jsonl", "kept": kept}}
    if scored:  # rows written before scores were saved in them leave the stage's reward means as they were
        out["reward"] = {model: r for model, (_, r) in summaries.items()}
    return add_statistics(out, values, stage_dir.parent, stage_dir.name)


def _changed(old: dict[str, Any], new: dict[str, Any]) -> int:
    """How many (model, metric) values differ between two `metrics` sections."""
    keys = {(m, k) for section in (old, new) for m, values in section.items() for k in values}
    return sum(1 for m, k in keys if old.get(m, {}).get(k) != new.get(m, {}).get(k))


def recompute_run(run_dir: Path) -> list[Path]:
    """Recompute every evaluate stage of run_dir, then write each results.json and re-render its report;
    returns the paths written (results.json, report.md and plots, per stage)."""
    run_dir = Path(run_dir)
    stored = {stage_id: load_results(run_dir / stage_id / RESULTS) for stage_id in evaluate_stages(run_dir)}
    updated = {stage_id: recompute_results(run_dir / stage_id, results) for stage_id, results in stored.items()}
    written: list[Path] = []
    for stage_id, results in updated.items():
        path = run_dir / stage_id / RESULTS
        before = stored[stage_id]["metrics"]
        atomic_write_json(path, results)
        logger.info("%s: metrics recomputed from %s/ (%d values changed)", path, GENERATIONS,
                    _changed(before, results["metrics"]))
        if results["recomputed"]["kept"]:
            logger.info("%s: kept %s as the stage's run left them: they need the reward source, the judge or the "
                        "training data, not only the saved answers (reward means and comparisons use the scores "
                        "saved in the rows, not re-scored); re-run the stage to refresh them", path,
                        ", ".join(results["recomputed"]["kept"]))
        written += [path, *render_report(run_dir, stage_id)]
    return written
