"""The report's statistics: "What each stage did", every model against the baseline, per-row breakdowns.

Everything here is read from results.json (`stage_effects`, `comparisons`, `breakdowns`, `statistics`), which
the evaluate stage and `rlmed report --recompute` compute (rlmed.eval.statistics); nothing is judged here, so
a verdict in the report is always the one computed with its interval. Each section comes as raw tables
(columns, rows) for W&B and tables/*.jsonl, and as markdown lines for report.md.
"""

from __future__ import annotations

from typing import Any

from rlmed.eval.bootstrap import CONFIDENCE, MIN_ROWS, RESAMPLES
from rlmed.eval.markdown import fmt, md_table, metric_label, number

Table = tuple[list[str], list[list[Any]]]

COMPARISON_COLUMNS = ["model", "baseline", "metric", "value", "baseline_value", "diff", "low", "high", "n",
                      "significant", "verdict"]
EFFECT_COLUMNS = ["stage", "kind", "model", "target", "compared_with", "value", "compared_value", "change", "low",
                  "high", "n", "verdict", "method", "note", "produced"]
BREAKDOWN_COLUMNS = ["field", "value", "model", "metric", "n", "mean", "diff", "low", "high", "significant",
                     "verdict"]
# Metrics a breakdown table in report.md shows (with the stage targets); results.json and the W&B table keep all.
BREAKDOWN_SHOWN = ("accuracy", "hit_rate_1", "rouge_l", "reward_mean")
NONE = "—"


def _values(results: dict[str, Any], model: str) -> dict[str, Any]:
    """A model's metrics and reward means in one mapping (a measured metric wins over a reward of one name)."""
    return {**(results.get("reward") or {}).get(model, {}), **(results.get("metrics") or {}).get(model, {})}


def signed(value: Any) -> str:
    """A change with its sign: +4.10, -0.03, 0."""
    found = number(value)
    if found is None:
        return NONE
    return ("+" if found > 0 else "") + fmt(found)


def interval(low: Any, high: Any) -> str:
    return NONE if number(low) is None or number(high) is None else f"[{signed(low)}, {signed(high)}]"


# --- raw tables -----------------------------------------------------------------------------------------------
def comparison_table(results: dict[str, Any]) -> Table:
    """One row per (model, metric) against the baseline."""
    baseline = results.get("baseline")
    base_values = _values(results, baseline) if baseline else {}
    rows = []
    for model, found in (results.get("comparisons") or {}).items():
        values = _values(results, model)
        for metric, e in found.items():
            rows.append([model, baseline, metric, values.get(metric), base_values.get(metric), e.get("diff"),
                         e.get("low"), e.get("high"), e.get("n"), e.get("significant"), e.get("verdict")])
    return list(COMPARISON_COLUMNS), rows


def _produced(e: dict[str, Any]) -> str | None:
    produced = e.get("produced") or {}
    return ", ".join(f"{k}={fmt(v)}" for k, v in produced.items()) or None


def effect_table(results: dict[str, Any]) -> Table:
    """One row per stage; "produced" as text (a W&B column holds one type)."""
    return list(EFFECT_COLUMNS), [[_produced(e) if k == "produced" else e.get(k) for k in EFFECT_COLUMNS]
                                  for e in results.get("stage_effects") or []]


def breakdown_table(results: dict[str, Any]) -> Table:
    """One row per (field, value, model, metric): the mean over the group's rows and, for the models other than
    the baseline, the difference with its interval."""
    rows = []
    for field, groups in (results.get("breakdowns") or {}).items():
        for value, group in groups.items():
            n = sum((group.get("n") or {}).values())
            for model, means in (group.get("metrics") or {}).items():
                versus = (group.get("comparisons") or {}).get(model, {})
                for metric, mean in means.items():
                    e = versus.get(metric, {})
                    rows.append([field, value, model, metric, n, mean, e.get("diff"), e.get("low"), e.get("high"),
                                 e.get("significant"), e.get("verdict")])
    return list(BREAKDOWN_COLUMNS), rows


# --- markdown -------------------------------------------------------------------------------------------------
def _method_note(results: dict[str, Any]) -> str:
    stats = results.get("statistics") or {}
    resamples, seed = stats.get("resamples", RESAMPLES), stats.get("seed", "?")
    confidence = round(100 * float(stats.get("confidence", CONFIDENCE)))
    return (f"{confidence}% intervals: paired bootstrap over the eval rows ({resamples} resamples, seed {seed}; "
            f"Distinct-n recomputed on each resample, its interval moved by the resampling's bias). A change is "
            f"better or worse only when its interval excludes 0 (for metrics marked ↓ a fall is better); "
            f"below {stats.get('min_rows', MIN_ROWS)} paired rows: too few rows.")


def _effect_cells(e: dict[str, Any]) -> list[Any]:
    if e.get("target") is None:
        target = f"produced: {_produced(e)}" if _produced(e) else NONE
    else:
        target = metric_label(str(e["target"]))
    if e.get("change") is not None:
        change = f"{signed(e['change'])} ({fmt(e.get('compared_value'))} → {fmt(e.get('value'))})"
        span = interval(e.get("low"), e.get("high")) + f", n={e.get('n')}"
        if e.get("method") and "Wilson" in str(e["method"]):
            span += " (Wilson)"
    else:
        change = NONE if e.get("value") is None else f"{fmt(e['value'])} (no comparison)"
        span = NONE
    verdict = e.get("verdict") or NONE
    if verdict == NONE and e.get("note"):
        verdict = f"{NONE} ({e['note']})"
    return [e.get("stage"), e.get("kind"), target, e.get("compared_with") or NONE, change, span, verdict]


def effects_markdown(results: dict[str, Any]) -> list[str]:
    """The "What each stage did" section's body."""
    if "stage_effects" not in results:
        return ["_results.json has no stage_effects (written by an older rlmed); `rlmed report --recompute` "
                "computes them from the saved generations._"]
    effects = results.get("stage_effects") or []
    if not effects:
        return ["_No other stage in this run: nothing to attribute._"]
    lines = md_table(["stage", "kind", "target measure", "compared with", "change", "95% interval", "verdict"],
                     [_effect_cells(e) for e in effects])
    return lines + ["", "Change: the stage's model minus the nearest evaluated model before it, on its target measure "
                        "(the stage's `targets` entry, else the default for its kind); reward models: held-out "
                        "pairwise accuracy minus chance, Wilson score interval. " + _method_note(results)]


def vs_baseline_markdown(results: dict[str, Any]) -> list[str]:
    """Metric rows, one column per model other than the baseline: change [95% interval] verdict."""
    found = results.get("comparisons") or {}
    baseline = results.get("baseline")
    if not found:
        return ["_No comparisons in results.json (one model only, or written by an older rlmed: "
                "`rlmed report --recompute` computes them)._"]
    metrics: list[str] = []
    for entries in found.values():
        metrics += [k for k in entries if k not in metrics]
    base_values = _values(results, baseline)
    rows = []
    for metric in metrics:
        row: list[Any] = [metric_label(metric), fmt(base_values.get(metric))]
        for model in found:
            e = found[model].get(metric)
            row.append(NONE if e is None else
                       f"{signed(e.get('diff'))} {interval(e.get('low'), e.get('high'))} {e.get('verdict')}")
        rows.append(row)
    lines = md_table(["metric", f"{baseline} (baseline)", *(f"{m} − {baseline}" for m in found)], rows)
    return lines + ["", _method_note(results)]


def _shown(metric: str, targets: set[str]) -> bool:
    leaf = metric.split("/", 1)[-1]
    return metric in targets or leaf in BREAKDOWN_SHOWN or leaf.startswith("reward.")


def breakdowns_markdown(results: dict[str, Any]) -> list[str]:
    """Per breakdown field, a table of the headline metrics per value: every model's mean, the others' change
    against the baseline with its interval."""
    found = results.get("breakdowns") or {}
    if not found:
        return ["_No breakdowns (no `breakdown_by` fields)._"]
    baseline = results.get("baseline")
    targets = {str(e.get("target")) for e in results.get("stage_effects") or [] if e.get("target")}
    lines: list[str] = []
    for field, groups in found.items():
        lines += [f"### By `{field}`", ""]
        if not groups:
            lines += [f"_No eval row has a `{field}` field._", ""]
            continue
        models = list(next(iter(groups.values())).get("metrics") or {})
        others = [m for m in models if m != baseline]
        rows = []
        for value, group in groups.items():
            n = sum((group.get("n") or {}).values())
            means = group.get("metrics") or {}
            keys = [k for k in means.get(baseline, {}) if _shown(k, targets)]
            for metric in keys:
                row: list[Any] = [value, n, metric_label(metric), fmt(means.get(baseline, {}).get(metric))]
                for model in others:
                    e = (group.get("comparisons") or {}).get(model, {}).get(metric) or {}
                    row.append(f"{fmt(means.get(model, {}).get(metric))} ({signed(e.get('diff'))} "
                               f"{interval(e.get('low'), e.get('high'))} {e.get('verdict', NONE)})")
                rows.append(row)
        if rows:
            lines += md_table([field, "n", "metric", f"{baseline} (baseline)", *others], rows)
        else:
            lines.append("_None of the headline metrics applies to these rows._")
        lines.append("")
    return lines + [f"Shown: {', '.join(BREAKDOWN_SHOWN)}, reward parts and stage targets; every metric of every "
                    "group is in results.json (`breakdowns`) and the breakdowns table. " + _method_note(results)]
