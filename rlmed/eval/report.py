"""The evaluation report: one markdown page and its plots, built from what a run left on disk.

`render_report(run_dir, stage_id)` reads the evaluate stage's `results.json` and every stage's `metrics.jsonl`
and `manifest.json`, and writes `run_dir/<stage_id>/report.md` with PNGs under `run_dir/<stage_id>/plots/`.
The page opens with "What each stage did" (results.json's `stage_effects`), then the models, the metrics, every
model against the baseline with its interval, the per-row breakdowns (rlmed.eval.report_stats), pairwise
judgements, contamination, training curves and the stages. It reads only files, so `rlmed report <run_dir>`
(`main_report`) can rebuild the report at any time, e.g. after a later stage finished or on another machine;
every verdict on the page is one results.json holds with its interval, none is made here.

Every file is written whole and renamed into place (rlmed.artifacts), so a reader never sees half a report;
plots (rlmed.eval.plots) are written before report.md, so the page never points at an image that is not there
yet. Fonts (rlmed.eval.plot_fonts) are set in an rc_context around the plots: installed CJK fonts and
RLMED_PLOT_FONT as fallbacks, so Chinese names render. `rlmed report <run_dir> --recompute`
(rlmed.eval.recompute) first recomputes results.json's metrics and statistics from the saved generations.

`tables(results)` gives the same tables as (columns, rows), for the evaluate stage to log as W&B tables.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rlmed.artifacts import MANIFEST, METRICS, atomic_write_text
from rlmed.eval.benchmark_scores import benchmark_table, benchmarks_markdown
from rlmed.eval.bootstrap import lower_is_better
from rlmed.eval.markdown import Markup, cell, fmt, md_table, metric_label, number
from rlmed.eval.plot_fonts import plot_fonts
from rlmed.eval.plots import curves, plot_curves, plot_family, plot_pairwise
from rlmed.eval.report_stats import (breakdown_table, breakdowns_markdown, comparison_table, effect_table,
                                     effects_markdown, vs_baseline_markdown)

logger = logging.getLogger(__name__)

RESULTS = "results.json"
REPORT = "report.md"
PLOTS = "plots"
EVALUATE_KIND = "evaluate"

# First key a stage logged is its training loss curve; PPO logs policy/value losses instead of a single "loss".
LOSS_KEYS = ("loss", "policy_loss")
# What "reward" means per stage kind: PPO's rollout mean, trl's GRPO/RLOO reward, DPO's implicit reward margin.
REWARD_KEYS = ("reward_mean", "reward", "rewards/margins")
# Shown in the stage summary when a stage's manifest has them, in this order (at most SUMMARY_LIMIT).
SUMMARY_KEYS = (
    "global_step", "last_loss", "eval_loss", "last_reward_mean", "last_kl", "heldout_reward_start",
    "heldout_reward_end", "eval_pairwise_accuracy", "eval_rewards/accuracies", "eval_rewards/margins",
    "pairs", "pairs_written",
)
SUMMARY_LIMIT = 5
MAX_MATCHES_SHOWN = 20  # contamination rows listed in report.md; results.json and tables() keep them all
PAIRWISE_COLUMNS = ["model", "baseline", "win", "tie", "loss", "failed", "n", "win_rate"]
CONTAMINATION_COLUMNS = ["eval_set", "row", "kind", "source", "similarity"]


class ReportError(RuntimeError):
    """The report cannot be built; the message names the file or folder at fault."""


# --- reading --------------------------------------------------------------------------------------------------
@dataclass
class StageInfo:
    id: str
    path: Path
    manifest: dict[str, Any] | None
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return str((self.manifest or {}).get("kind") or "?")


def _read_json(path: Path) -> Any:
    """A JSON file's content, or None when it is absent or unreadable (a report shows what is there)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("report: ignoring unreadable %s (%s)", path, exc)
        return None


def _read_records(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl rows, skipping undecodable lines: a stage still running may have half a line at the end,
    and one torn line should not cost the whole curve."""
    if not path.is_file():
        return []
    rows = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            logger.warning("report: skipping unreadable line %d of %s", line_no, path)
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_stages(run_dir: Path) -> list[StageInfo]:
    """Every stage folder of run_dir (one with a manifest or a metrics log), oldest first.

    The recipe is not read (the report must work on a copied run folder), so the order comes from the
    manifests' start times, falling back to the folder's modification time for unfinished stages.
    """
    found = []
    for path in sorted(p for p in Path(run_dir).iterdir() if p.is_dir() and not p.name.startswith(".")):
        manifest = _read_json(path / MANIFEST)
        manifest = manifest if isinstance(manifest, dict) else None
        if manifest is None and not (path / METRICS).is_file():
            continue
        found.append(StageInfo(path.name, path, manifest, _read_records(path / METRICS)))

    def started(stage: StageInfo) -> float:
        text = (stage.manifest or {}).get("started_at")
        try:
            return datetime.fromisoformat(str(text)).timestamp()
        except ValueError:
            return stage.path.stat().st_mtime

    return sorted(found, key=lambda s: (started(s), s.id))


def load_results(path: Path) -> dict[str, Any]:
    """results.json of an evaluate stage, checked and with its optional parts filled in."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"{path}: no such file; the evaluate stage writes it, so run (or finish) that stage "
                          "before building its report") from None
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path}: cannot read it as JSON ({exc})") from exc
    return _normalise(raw, str(path))


def _normalise(raw: Any, where: str) -> dict[str, Any]:
    """The results with every section present and of the expected type (ReportError naming `where` if not)."""
    if not isinstance(raw, dict):
        raise ReportError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    expected = {"models": dict, "eval_sets": dict, "metrics": dict, "pairwise": dict, "reward": dict,
                "contamination": list}
    results = dict(raw)
    for key, kind in expected.items():
        value = results.get(key)
        if value is None:
            results[key] = kind()
        elif not isinstance(value, kind):
            raise ReportError(f"{where}: '{key}' should be a JSON {'object' if kind is dict else 'array'}, "
                              f"got {type(value).__name__}")
    if not results["metrics"] and not results["pairwise"] and not results["reward"]:
        raise ReportError(f"{where}: has no 'metrics', 'pairwise' or 'reward' results; nothing to report")
    for section in ("metrics", "pairwise", "reward"):
        for model, value in results[section].items():
            if not isinstance(value, dict):
                raise ReportError(f"{where}: {section}.{model} should be a JSON object, got {type(value).__name__}")
    for index, match in enumerate(results["contamination"]):
        if not isinstance(match, dict):
            raise ReportError(f"{where}: contamination[{index}] should be a JSON object")
    # The statistics sections are optional (a results.json from before they existed has none), but typed.
    for key, kind in (("comparisons", dict), ("breakdowns", dict), ("benchmarks", dict), ("stage_effects", list)):
        if key in results and not isinstance(results[key], kind):
            raise ReportError(f"{where}: '{key}' should be a JSON {'object' if kind is dict else 'array'}, "
                              f"got {type(results[key]).__name__}")
    return results


# --- tables ---------------------------------------------------------------------------------------------------
def model_names(results: dict[str, Any]) -> list[str]:
    """Models in results order, the baseline first (the others are compared with it)."""
    names: list[str] = []
    for section in ("models", "metrics", "reward", "pairwise"):
        names += [m for m in results.get(section, {}) if m not in names]
    baseline = results.get("baseline")
    if baseline in names:
        names.remove(baseline)
        names.insert(0, baseline)
    return names


def model_metrics(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per model, its eval metrics and reward-model scores in one mapping (one comparison table for both)."""
    merged: dict[str, dict[str, Any]] = {}
    for model in model_names(results):
        merged[model] = dict(results["metrics"].get(model, {}))
        # Reward scores after the eval metrics; an eval metric of the same name wins (it is the measured one).
        merged[model].update({k: v for k, v in results["reward"].get(model, {}).items() if k not in merged[model]})
    return merged


def metric_names(results: dict[str, Any]) -> list[str]:
    """Every metric any model has, grouped by eval set in results order (unknown sets last), else first seen."""
    seen: list[str] = []
    for values in model_metrics(results).values():
        seen += [k for k in values if k not in seen]
    sets = list(results.get("eval_sets", {}))

    def group(metric: str) -> int:
        prefix = metric.split("/", 1)[0] if "/" in metric else None
        return sets.index(prefix) if prefix in sets else len(sets)

    return sorted(seen, key=group)  # sorted() is stable: first-seen order within each eval set


def best_values(results: dict[str, Any]) -> dict[str, float]:
    """Per metric, the best value among the models (only where at least two models can be compared)."""
    per_model = model_metrics(results)
    best = {}
    for metric in metric_names(results):
        values = [v for v in (number(m.get(metric)) for m in per_model.values()) if v is not None]
        if len(values) >= 2:
            best[metric] = min(values) if lower_is_better(metric) else max(values)
    return best


def _pairwise_row(model: str, baseline: Any, entry: dict[str, Any]) -> list[Any]:
    counts = {k: int(number(entry.get(k)) or 0) for k in ("win", "tie", "loss", "failed")}
    n = int(number(entry.get("n")) or sum(counts.values()))
    rate = number(entry.get("win_rate"))
    if rate is None and n:
        rate = counts["win"] / n  # the evaluate stage's definition: wins over all prompts judged
    return [model, baseline, counts["win"], counts["tie"], counts["loss"], counts["failed"], n, rate]


def tables(results: dict[str, Any]) -> dict[str, tuple[list[str], list[list[Any]]]]:
    """The report's tables as (columns, rows), raw values (None where missing), for W&B tables.

    Always the same keys, rows possibly empty: "comparison" (one row per model, one column per metric),
    "vs_baseline" (one row per model and metric: the change against the baseline with its interval and
    verdict), "stage_effects" (what each stage did), "breakdowns" (per field value, model and metric),
    "benchmarks" (each choice or benchmark set's score per model, HealthBench's per tag too),
    "pairwise" (each model against the baseline), "contamination" (every match) and "contamination_by_set".
    """
    results = _normalise(results, "results")
    per_model = model_metrics(results)
    metrics = metric_names(results)
    comparison = (["model", *metrics], [[m, *(values.get(k) for k in metrics)] for m, values in per_model.items()])
    baseline = results.get("baseline")
    pairwise = (list(PAIRWISE_COLUMNS),
                [_pairwise_row(m, baseline, e) for m, e in results["pairwise"].items() if m != baseline])
    matches = results["contamination"]
    contamination = (list(CONTAMINATION_COLUMNS), [[m.get(k) for k in CONTAMINATION_COLUMNS] for m in matches])
    sets = list(results["eval_sets"]) + sorted({str(m.get("eval_set")) for m in matches} - set(results["eval_sets"]))
    by_set = (["eval_set", "rows", "matches"],
              [[name, (results["eval_sets"].get(name) or {}).get("rows"),
                sum(1 for m in matches if str(m.get("eval_set")) == name)] for name in sets])
    return {"comparison": comparison, "vs_baseline": comparison_table(results), "stage_effects": effect_table(results),
            "breakdowns": breakdown_table(results), "benchmarks": benchmark_table(results), "pairwise": pairwise,
            "contamination": contamination, "contamination_by_set": by_set}


# --- markdown -------------------------------------------------------------------------------------------------
def comparison_markdown(results: dict[str, Any]) -> list[str]:
    """One table of every model on every metric, the best value per metric in bold.

    Models are rows while the metrics fit across a page; with many metrics (the usual case: BLEU-1..4,
    ROUGE, GLEU, Distinct, accuracy, hit rates...) the table is transposed so it grows down instead of off
    the right edge of a rendered page.
    """
    per_model = model_metrics(results)
    metrics = metric_names(results)
    if not metrics:
        return ["_No per-model metrics in results.json._"]
    best = best_values(results)
    baseline = results.get("baseline")

    def shown(model: str, metric: str) -> str:
        value = per_model[model].get(metric)
        text = Markup(cell(value))
        found = number(value)
        return Markup(f"**{text}**") if found is not None and metric in best and found == best[metric] else text

    def model_label(model: str) -> str:
        return f"{model} (baseline)" if model == baseline else model

    models = list(per_model)
    if len(metrics) > 8 and len(metrics) > len(models):
        lines = md_table(["metric", *(model_label(m) for m in models)],
                          [[metric_label(k), *(shown(m, k) for m in models)] for k in metrics])
    else:
        lines = md_table(["model", *(metric_label(k) for k in metrics)],
                          [[model_label(m), *(shown(m, k) for k in metrics)] for m in models])
    notes = ["Best value per metric in **bold** (where two or more models have it)."]
    lower = [k for k in metrics if lower_is_better(k)]
    if lower:
        notes.append(f"Lower is better for the metrics marked ↓ ({', '.join(lower)}); higher is better for the rest.")
    else:
        notes.append("Higher is better for every metric.")
    return lines + ["", " ".join(notes)]


def _stage_summary(stage: StageInfo) -> list[Any]:
    if stage.manifest is None:
        return [stage.id, stage.kind, "not finished", "–", f"{len(stage.records)} records logged"]
    metrics = stage.manifest.get("metrics") or {}
    keys = [k for k in SUMMARY_KEYS if number(metrics.get(k)) is not None]
    if not keys:  # a kind this list does not know: its first few numbers, so the row is not empty
        keys = sorted(k for k, v in metrics.items() if number(v) is not None)
    shown = ", ".join(f"{k}={fmt(metrics[k])}" for k in keys[:SUMMARY_LIMIT]) or "–"
    duration = number(stage.manifest.get("duration_s"))
    shown_duration = "–" if duration is None else f"{duration:.{0 if duration >= 10 else 1}f} s"
    return [stage.id, stage.kind, "done", shown_duration, shown]


def metric_families(results: dict[str, Any]) -> dict[str, list[str]]:
    """Metrics grouped by eval set (the part before "/"); metrics without one are grouped as "other"."""
    families: dict[str, list[str]] = {}
    for metric in metric_names(results):
        families.setdefault(metric.split("/", 1)[0] if "/" in metric else "other", []).append(metric)
    return families


def _slug(name: str, used: set[str]) -> str:
    """A file-name part for an eval set: word characters kept (Chinese set names stay readable), and made
    unique, so two sets that differ only in punctuation do not overwrite each other's chart."""
    base = re.sub(r"[^\w.-]+", "_", name).strip("_.") or "set"
    slug, n = base, 2
    while slug in used:
        slug, n = f"{base}_{n}", n + 1
    used.add(slug)
    return slug


def _plot_labels(results: dict[str, Any], stages: list[StageInfo]) -> list[str]:
    """Every name a plot may draw: models, eval sets, metrics, the baseline, stage ids."""
    labels = [str(results.get("baseline") or ""), *model_names(results), *results["eval_sets"],
              *metric_names(results)]
    return labels + [s.id for s in stages]


# --- the report -----------------------------------------------------------------------------------------------
def render_report(run_dir: Path, stage_id: str) -> list[Path]:
    """Write run_dir/<stage_id>/report.md and its PNGs (plots/); return [report.md, *PNGs written]."""
    run_dir = Path(run_dir)
    stage_dir = run_dir / stage_id
    results = load_results(stage_dir / RESULTS)
    stages = read_stages(run_dir)
    plots_dir = stage_dir / PLOTS
    table = tables(results)
    baseline = results.get("baseline")
    written: list[Path] = []
    sections: dict[str, list[str]] = {}

    def embed(name: str, title: str, path: Path | None, skipped: str) -> None:
        if path is None:
            sections.setdefault(name, []).append(f"_{skipped}_")
        else:
            written.append(path)
            sections.setdefault(name, []).append(f"![{title}]({path.relative_to(stage_dir).as_posix()})")

    # Model, set and stage names may be Chinese: draw them with a CJK font where one is installed.
    with plot_fonts(_plot_labels(results, stages)):
        embed("curves", "Loss curves", plot_curves(curves(stages, LOSS_KEYS), plots_dir / "loss_curves.png",
                                                   "Training loss"),
              "No loss curves: no stage in this run logged a training loss.")
        embed("curves", "Reward curves", plot_curves(curves(stages, REWARD_KEYS), plots_dir / "reward_curves.png",
                                                     "Reward during training"),
              f"No reward curves: no stage in this run logged {', '.join(REWARD_KEYS)} (no PPO/GRPO/RLOO/DPO "
              "stage).")
        embed("pairwise", "Pairwise win rates",
              plot_pairwise(table["pairwise"][1], baseline, plots_dir / "win_rates.png"),
              "No win-rate chart: no pairwise judgements in results.json.")
        used: set[str] = set()
        for family, metrics in metric_families(results).items():
            embed("metrics", f"{family} metrics",
                  plot_family(model_metrics(results), family, metrics,
                              (results["eval_sets"].get(family) or {}).get("kind"),
                              plots_dir / f"metrics_{_slug(family, used)}.png"),
                  f"No chart for {family}: none of its metrics has a numeric value.")

    text = "\n".join(_markdown(run_dir, stage_id, results, stages, table, sections)) + "\n"
    report = stage_dir / REPORT
    atomic_write_text(report, text)
    # A plot an earlier render made but this one did not (e.g. its data went away) must not linger beside
    # the report as if it were current; removed only now, so the previous report never links a missing file.
    for stale in plots_dir.glob("*.png"):
        if stale not in written:
            stale.unlink()
    logger.info("report written to %s (%d plots)", report, len(written))
    return [report, *written]


def _markdown(run_dir: Path, stage_id: str, results: dict[str, Any], stages: list[StageInfo],
              table: dict[str, tuple[list[str], list[list[Any]]]], sections: dict[str, list[str]]) -> list[str]:
    baseline = results.get("baseline")
    lines = [f"# Evaluation report: {run_dir}", ""]
    lines += ["## What each stage did", ""] + effects_markdown(results) + [""]
    chain = " → ".join(f"`{s.id}` ({s.kind})" for s in stages) or "none found"
    lines += [f"Stages: {chain}", "",
              f"Evaluate stage: `{stage_id}`" + (f"; baseline: `{baseline}`" if baseline else ""), ""]
    recomputed = results.get("recomputed")
    if isinstance(recomputed, dict):
        kept = ", ".join(recomputed.get("kept") or []) or "nothing else"
        lines += [f"Metrics recomputed from the saved generations at {recomputed.get('at', '?')} "
                  f"(`rlmed report --recompute`); {kept} as the stage's run left them.", ""]

    if results["models"]:
        lines += ["## Models", ""]
        lines += md_table(["model", "stage", "path"],
                           [[m, (info or {}).get("stage"), (info or {}).get("path")]
                            for m, info in results["models"].items()])
        lines.append("")
    if results["eval_sets"]:
        lines += ["## Eval sets", ""]
        sets = results["eval_sets"].items()
        if any((info or {}).get("format") for _, info in sets):  # benchmark sets: say which layout was read
            lines += md_table(["eval set", "kind", "format", "rows"],
                              [[name, (info or {}).get("kind"), (info or {}).get("format") or "—",
                                (info or {}).get("rows")] for name, info in sets])
        else:
            lines += md_table(["eval set", "kind", "rows"],
                              [[name, (info or {}).get("kind"), (info or {}).get("rows")] for name, info in sets])
        lines.append("")
        lines += benchmarks_markdown(results)

    lines += ["## Metrics", ""] + comparison_markdown(results) + [""]
    lines += ["## Against the baseline" + (f" `{baseline}`" if baseline else ""), ""]
    lines += vs_baseline_markdown(results) + [""]
    lines += _spaced(sections.get("metrics", []))
    lines += ["## Breakdowns", ""] + breakdowns_markdown(results) + [""]

    lines += ["## Pairwise judgement" + (f" against `{baseline}`" if baseline else ""), ""]
    rows = table["pairwise"][1]
    if rows:
        shown = [[r[0], r[2], r[3], r[4], r[5], r[6], "–" if r[7] is None else f"{100 * r[7]:.1f}%"] for r in rows]
        lines += md_table(["model", "win", "tie", "loss", "failed", "n", "win rate"], shown)
        lines += ["", "Win rate as the evaluate stage reports it (wins / n where results.json leaves it out).", ""]
    else:
        lines += ["_No pairwise judgements in results.json._", ""]
    lines += _spaced(sections.get("pairwise", []))
    lines += doctors_lines(run_dir)

    lines += ["## Contamination", ""]
    matches = table["contamination"][1]
    if matches:
        lines += md_table(["eval set", "rows", "matches"], table["contamination_by_set"][1]) + [""]
        ordered = sorted(matches, key=lambda r: (str(r[0]), number(r[1]) or 0))
        lines += md_table(["eval set", "row", "kind", "source", "similarity"], ordered[:MAX_MATCHES_SHOWN])
        if len(ordered) > MAX_MATCHES_SHOWN:
            lines += ["", f"… and {len(ordered) - MAX_MATCHES_SHOWN} more (all in results.json)."]
        lines.append("")
    else:
        lines += ["None found: no eval row matched the training data.", ""]

    lines += ["## Training curves", ""] + _spaced(sections.get("curves", []))

    lines += ["## Stages", ""]
    if stages:
        lines += md_table(["stage", "kind", "status", "duration", "key metrics"], [_stage_summary(s) for s in stages])
    else:
        lines.append("_No stage folders found._")
    lines.append("")

    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines += ["---", "", (f"_Generated {when} by rlmed.eval.report from `{run_dir / stage_id / RESULTS}` and the "
                          f"stages' metrics.jsonl and manifest.json; `rlmed report {run_dir}` regenerates it._")]
    return lines


def doctors_lines(run_dir: Path) -> list[str]:
    """The "Doctors" section when the run has a review (`rlmed review`): win rates, judge-doctor and
    inter-annotator agreement from the labels given so far; nothing otherwise. Imported here, not at the top:
    rlmed.review builds on rlmed.eval."""
    from rlmed.review.report import doctors_markdown, run_section

    return doctors_markdown(run_section(run_dir) or {})


def _spaced(items: list[str]) -> list[str]:
    out = []
    for item in items:
        out += [item, ""]
    return out


def evaluate_stages(run_dir: Path) -> list[str]:
    """Ids of run_dir's evaluate stages (kind "evaluate", or any folder with a results.json), by name;
    ReportError when the folder is missing or has none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such run directory")
    targets = []
    for path in sorted(p for p in run_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        manifest = _read_json(path / MANIFEST)
        kind = manifest.get("kind") if isinstance(manifest, dict) else None
        if kind == EVALUATE_KIND or (path / RESULTS).is_file():
            targets.append(path.name)
    if not targets:
        raise ReportError(f"{run_dir}: no evaluate stage found (no stage folder with {RESULTS} or a manifest of "
                          f"kind '{EVALUATE_KIND}'); run a recipe with an evaluate stage first")
    return targets


def main_report(run_dir: Path) -> list[Path]:
    """Render the report of every evaluate stage in run_dir (kind "evaluate", or any with a results.json)."""
    written: list[Path] = []
    for stage_id in evaluate_stages(run_dir):
        written += render_report(Path(run_dir), stage_id)
    return written
