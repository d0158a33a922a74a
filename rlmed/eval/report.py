"""The evaluation report: one markdown page and its plots, built from what a run left on disk.

`render_report(run_dir, stage_id)` reads the evaluate stage's `results.json` and every stage's `metrics.jsonl`
and `manifest.json`, and writes `run_dir/<stage_id>/report.md` with PNGs under `run_dir/<stage_id>/plots/`:
loss curves of the training stages, reward curves of the RL / preference stages, pairwise win/tie/loss bars
against the baseline, and one bar chart per eval set. It reads only files, so `rlmed report <run_dir>`
(`main_report`) can rebuild the report at any time, e.g. after a later stage finished or on another machine.

Every file is written whole and renamed into place (rlmed.artifacts), so a reader never sees half a report;
plots are written before report.md, so the page never points at an image that is not there yet.
Plots use matplotlib's object API with the Agg canvas: no display is needed, and pyplot's global backend and
figure registry (which a notebook user may rely on) are left alone. Fonts (rlmed.eval.plot_fonts) are set in an
rc_context around the plots: installed CJK fonts and RLMED_PLOT_FONT as fallbacks, so Chinese names render.
`rlmed report <run_dir> --recompute` (rlmed.eval.recompute) first recomputes results.json's metrics from the
saved generations.

`tables(results)` gives the same tables as (columns, rows), for the evaluate stage to log as W&B tables.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rlmed.artifacts import MANIFEST, METRICS, atomic_write_bytes, atomic_write_text
from rlmed.eval.plot_fonts import plot_fonts

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
# Name parts that mean a smaller value is better (perplexity, error rates); everything else: larger is better.
LOWER_IS_BETTER = {"loss", "perplexity", "ppl", "error", "errors", "ter", "wer", "cer", "latency", "runtime",
                   "failed", "unscored"}
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
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            logger.warning("report: skipping unreadable line %d of %s", number, path)
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
    return results


# --- tables ---------------------------------------------------------------------------------------------------
def _number(value: Any) -> float | None:
    """A finite number, or None (bools, strings such as the "nan" metrics.jsonl stores, and inf excluded)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def lower_is_better(metric: str) -> bool:
    leaf = metric.rsplit("/", 1)[-1].lower()
    return any(part in LOWER_IS_BETTER for part in re.split(r"[^a-z0-9]+", leaf))


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
        values = [v for v in (_number(m.get(metric)) for m in per_model.values()) if v is not None]
        if len(values) >= 2:
            best[metric] = min(values) if lower_is_better(metric) else max(values)
    return best


def _pairwise_row(model: str, baseline: Any, entry: dict[str, Any]) -> list[Any]:
    counts = {k: int(_number(entry.get(k)) or 0) for k in ("win", "tie", "loss", "failed")}
    n = int(_number(entry.get("n")) or sum(counts.values()))
    rate = _number(entry.get("win_rate"))
    if rate is None and n:
        rate = counts["win"] / n  # the evaluate stage's definition: wins over all prompts judged
    return [model, baseline, counts["win"], counts["tie"], counts["loss"], counts["failed"], n, rate]


def tables(results: dict[str, Any]) -> dict[str, tuple[list[str], list[list[Any]]]]:
    """The report's tables as (columns, rows), raw values (None where missing), for W&B tables.

    Always the same keys, rows possibly empty: "comparison" (one row per model, one column per metric),
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
    return {"comparison": comparison, "pairwise": pairwise, "contamination": contamination,
            "contamination_by_set": by_set}


# --- markdown -------------------------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == 0:
            return "0"
        return f"{value:.2f}" if 1 <= abs(value) < 1e5 else f"{value:.4g}"
    return str(value)


class _Markup(str):
    """A cell already in markdown (e.g. a bold best value): written as it is, not escaped again."""


def _cell(value: Any) -> str:
    if isinstance(value, _Markup):
        return value
    # A "|" would end the cell and a newline the row: markdown tables have no other way to quote them.
    return _fmt(value).replace("|", "\\|").replace("\n", " ")


def _numeric_cell(value: Any) -> bool:
    if value is None or _number(value) is not None:
        return True
    try:
        float(str(value).strip("*%").replace("–", "nan"))
        return True
    except ValueError:
        return False


def _md_table(columns: list[str], rows: list[list[Any]]) -> list[str]:
    """A markdown table; columns of numbers are right-aligned so their digits line up, text left-aligned."""
    head = "| " + " | ".join(_cell(c) for c in columns) + " |"
    numeric = [all(_numeric_cell(row[i]) for row in rows) for i in range(len(columns))]
    rule = "|" + "|".join("---:" if n and rows else ":---" for n in numeric) + "|"
    body = ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return [head, rule, *body]


def _metric_label(metric: str) -> str:
    return f"{metric} ↓" if lower_is_better(metric) else metric


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
        text = _Markup(_cell(value))
        number = _number(value)
        return _Markup(f"**{text}**") if number is not None and metric in best and number == best[metric] else text

    def model_label(model: str) -> str:
        return f"{model} (baseline)" if model == baseline else model

    models = list(per_model)
    if len(metrics) > 8 and len(metrics) > len(models):
        lines = _md_table(["metric", *(model_label(m) for m in models)],
                          [[_metric_label(k), *(shown(m, k) for m in models)] for k in metrics])
    else:
        lines = _md_table(["model", *(_metric_label(k) for k in metrics)],
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
    keys = [k for k in SUMMARY_KEYS if _number(metrics.get(k)) is not None]
    if not keys:  # a kind this list does not know: its first few numbers, so the row is not empty
        keys = sorted(k for k, v in metrics.items() if _number(v) is not None)
    shown = ", ".join(f"{k}={_fmt(metrics[k])}" for k in keys[:SUMMARY_LIMIT]) or "–"
    duration = _number(stage.manifest.get("duration_s"))
    shown_duration = "–" if duration is None else f"{duration:.{0 if duration >= 10 else 1}f} s"
    return [stage.id, stage.kind, "done", shown_duration, shown]


# --- plots ----------------------------------------------------------------------------------------------------
def _figure(width: float, height: float) -> Any:
    # Imported here: building a recipe or the CLI should not pay matplotlib's import time.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    fig.clear()  # the figure is not registered with pyplot, so dropping it (and its artists) frees it
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one logged key; records without a step are placed by their position."""
    xs, ys = [], []
    for index, record in enumerate(records):
        value = _number(record.get(key))
        if value is None:
            continue
        step = _number(record.get("step"))
        xs.append(step if step is not None else float(index))
        ys.append(value)
    return xs, ys


def _curves(stages: list[StageInfo], keys: tuple[str, ...]) -> list[tuple[StageInfo, str, tuple, tuple]]:
    """Per stage, the first of `keys` it logged: (stage, key, train series, held-out eval_<key> series)."""
    found = []
    for stage in stages:
        for key in keys:
            train = _series(stage.records, key)
            if train[0]:
                found.append((stage, key, train, _series(stage.records, f"eval_{key}")))
                break
    return found


def _grid(n: int) -> tuple[int, int]:
    cols = min(3, n)
    return math.ceil(n / cols), cols


def plot_curves(curves: list, path: Path, what: str) -> Path | None:
    """One subplot per stage: the scales differ too much (pretraining loss ~8, GRPO loss ~0) to share axes."""
    if not curves:
        return None
    rows, cols = _grid(len(curves))
    fig = _figure(4.2 * cols, 3.0 * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (stage, key, train, held_out) in zip(axes.flat, curves):
        # A marker on short series: one PPO rollout is a single point, which a bare line would not draw.
        ax.plot(*train, "o-" if len(train[0]) < 3 else "-", markersize=4, linewidth=1.2, label=key)
        if held_out[0]:
            ax.plot(*held_out, "o--", markersize=4, linewidth=1, label=f"eval_{key}")
        ax.set_title(f"{stage.id} ({stage.kind})", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        if held_out[0]:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(curves):]:
        ax.set_visible(False)
    fig.suptitle(what)
    return _save(fig, path)


def plot_pairwise(rows: list[list[Any]], baseline: Any, path: Path) -> Path | None:
    """Stacked horizontal bars of win/tie/loss/failed shares per model; counts written on the segments."""
    rows = [r for r in rows if r[6]]  # n == 0: nothing was judged, a bar would divide by zero
    if not rows:
        return None
    fig = _figure(7.5, 1.2 + 0.55 * len(rows))
    ax = fig.subplots()
    parts = (("win", 2, "#4caf50"), ("tie", 3, "#bdbdbd"), ("loss", 4, "#e57373"), ("failed", 5, "#757575"))
    names = [str(r[0]) for r in rows]
    left = [0.0] * len(rows)
    for label, column, colour in parts:
        shares = [r[column] / r[6] for r in rows]
        bars = ax.barh(names, shares, left=left, color=colour, label=label)
        for bar, row, share in zip(bars, rows, shares):
            if share >= 0.06:  # a label on a thinner segment would overflow it
                ax.text(bar.get_x() + bar.get_width() / 2, bar.get_y() + bar.get_height() / 2, str(row[column]),
                        ha="center", va="center", fontsize=8)
        left = [a + b for a, b in zip(left, shares)]
    ax.set_xlim(0, 1)
    ax.invert_yaxis()  # first model on top, as in the table
    ax.set_xlabel("share of judged prompts")
    ax.set_title(f"Pairwise judgement against {baseline}")
    fig.legend(ncols=4, fontsize=8, loc="outside lower center")  # below the axes, kept inside the image
    return _save(fig, path)


def metric_families(results: dict[str, Any]) -> dict[str, list[str]]:
    """Metrics grouped by eval set (the part before "/"); metrics without one are grouped as "other"."""
    families: dict[str, list[str]] = {}
    for metric in metric_names(results):
        families.setdefault(metric.split("/", 1)[0] if "/" in metric else "other", []).append(metric)
    return families


def plot_family(results: dict[str, Any], family: str, metrics: list[str], path: Path) -> Path | None:
    """One small chart per metric of an eval set, models side by side, so BLEU in % and a reward near 0
    each get an axis of their own."""
    per_model = model_metrics(results)
    metrics = [k for k in metrics if any(_number(v.get(k)) is not None for v in per_model.values())]
    if not metrics:
        return None
    models = list(per_model)
    colours = [f"C{i % 10}" for i in range(len(models))]  # the same colour for a model on every chart
    cols = min(4, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig = _figure(max(2.0 + 0.55 * len(models), 3.2) * cols, 3.0 * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        values = [_number(per_model[m].get(metric)) for m in models]
        heights = [0.0 if v is None else v for v in values]
        bars = ax.bar(range(len(models)), heights, color=colours)
        for bar, value in zip(bars, values):
            ax.annotate("n/a" if value is None else _fmt(value), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(range(len(models)), models, rotation=30 if len(models) > 3 else 0, fontsize=8)
        ax.set_title(_metric_label(metric.split("/", 1)[1] if metric.startswith(f"{family}/") else metric),
                     fontsize=9)
        ax.margins(y=0.15)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    kind = (results["eval_sets"].get(family) or {}).get("kind")
    fig.suptitle(f"{family} ({kind})" if kind else family)
    return _save(fig, path)


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
        embed("curves", "Loss curves", plot_curves(_curves(stages, LOSS_KEYS), plots_dir / "loss_curves.png",
                                                   "Training loss"),
              "No loss curves: no stage in this run logged a training loss.")
        embed("curves", "Reward curves", plot_curves(_curves(stages, REWARD_KEYS), plots_dir / "reward_curves.png",
                                                     "Reward during training"),
              f"No reward curves: no stage in this run logged {', '.join(REWARD_KEYS)} (no PPO/GRPO/RLOO/DPO "
              "stage).")
        embed("pairwise", "Pairwise win rates",
              plot_pairwise(table["pairwise"][1], baseline, plots_dir / "win_rates.png"),
              "No win-rate chart: no pairwise judgements in results.json.")
        used: set[str] = set()
        for family, metrics in metric_families(results).items():
            embed("metrics", f"{family} metrics",
                  plot_family(results, family, metrics, plots_dir / f"metrics_{_slug(family, used)}.png"),
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
        lines += _md_table(["model", "stage", "path"],
                           [[m, (info or {}).get("stage"), (info or {}).get("path")]
                            for m, info in results["models"].items()])
        lines.append("")
    if results["eval_sets"]:
        lines += ["## Eval sets", ""]
        lines += _md_table(["eval set", "kind", "rows"],
                           [[name, (info or {}).get("kind"), (info or {}).get("rows")]
                            for name, info in results["eval_sets"].items()])
        lines.append("")

    lines += ["## Metrics", ""] + comparison_markdown(results) + [""]
    lines += _spaced(sections.get("metrics", []))

    lines += ["## Pairwise judgement" + (f" against `{baseline}`" if baseline else ""), ""]
    rows = table["pairwise"][1]
    if rows:
        shown = [[r[0], r[2], r[3], r[4], r[5], r[6], "–" if r[7] is None else f"{100 * r[7]:.1f}%"] for r in rows]
        lines += _md_table(["model", "win", "tie", "loss", "failed", "n", "win rate"], shown)
        lines += ["", "Win rate as the evaluate stage reports it (wins / n where results.json leaves it out).", ""]
    else:
        lines += ["_No pairwise judgements in results.json._", ""]
    lines += _spaced(sections.get("pairwise", []))

    lines += ["## Contamination", ""]
    matches = table["contamination"][1]
    if matches:
        lines += _md_table(["eval set", "rows", "matches"], table["contamination_by_set"][1]) + [""]
        ordered = sorted(matches, key=lambda r: (str(r[0]), _number(r[1]) or 0))
        lines += _md_table(["eval set", "row", "kind", "source", "similarity"], ordered[:MAX_MATCHES_SHOWN])
        if len(ordered) > MAX_MATCHES_SHOWN:
            lines += ["", f"… and {len(ordered) - MAX_MATCHES_SHOWN} more (all in results.json)."]
        lines.append("")
    else:
        lines += ["None found: no eval row matched the training data.", ""]

    lines += ["## Training curves", ""] + _spaced(sections.get("curves", []))

    lines += ["## Stages", ""]
    if stages:
        lines += _md_table(["stage", "kind", "status", "duration", "key metrics"], [_stage_summary(s) for s in stages])
    else:
        lines.append("_No stage folders found._")
    lines.append("")

    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines += ["---", "", (f"_Generated {when} by rlmed.eval.report from `{run_dir / stage_id / RESULTS}` and the "
                          f"stages' metrics.jsonl and manifest.json; `rlmed report {run_dir}` regenerates it._")]
    return lines


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
