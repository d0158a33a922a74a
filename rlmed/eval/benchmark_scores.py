"""Each eval set's headline score as its benchmark reports it, for results.json's `benchmarks` and report.md.

Computed from the per-row values (rlmed.eval.generations.SetValues) by rlmed.eval.statistics, so the evaluate stage
and `rlmed report --recompute` give the same numbers:

- choice sets (every benchmark's multiple choice, and plain choice rows): accuracy with its own 95% percentile
  interval (the rows resampled with the draws the paired comparisons use), the shares of wrong and of unanswerable
  outputs (no letter could be read: a format failure, not a knowledge one), and the change against the baseline
  with its paired interval (rlmed.eval.comparisons);
- generation benchmarks (CMB-Clin): the reward source's mean (the judge against each reference), else ROUGE-L,
  the same way;
- HealthBench (methods.md §9): the mean of the per-example scores clipped to [0, 1] and the standard deviation of
  that clipped mean over 1,000 resamples of the examples, as HealthBench's own code reports them; per tag the same
  over the examples the tag applies to: a rubric tag (axis:accuracy) scores only the example's items with that tag
  (the reward source's "tag:<name>" part), an example tag (theme:emergency_referrals) the whole example. Draws are
  seeded by (seed, set, tag), so a recompute gives the same deviations.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from rlmed.eval.bootstrap import RESAMPLES, paired_means, rng_for
from rlmed.eval.generations import PART_PREFIX, REWARD_MEAN, TAG_PART, SetValues
from rlmed.eval.markdown import fmt, md_table

HEALTHBENCH = "healthbench"
HEALTHBENCH_RESAMPLES = 1000  # HealthBench's own bootstrap size
EXAMPLE_TAGS = "example_tags"  # the saved row tag holding a HealthBench example's tags
BENCHMARK_COLUMNS = ["eval_set", "format", "model", "metric", "tag", "n", "value", "low", "high", "bootstrap_std",
                     "diff", "diff_low", "diff_high", "verdict", "wrong", "unanswerable"]
NONE = "—"


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def clipped_stats(values: np.ndarray, rng: np.random.Generator,
                  resamples: int = HEALTHBENCH_RESAMPLES) -> dict[str, Any]:
    """HealthBench's statistics of per-example scores: the mean clipped to [0, 1], and the standard deviation
    of the clipped means of `resamples` resamples with replacement; n the examples."""
    n = len(values)
    if n == 0:
        return {"score": None, "bootstrap_std": None, "n": 0}
    draws = np.empty(resamples)
    step = max(1, 2_000_000 // n)  # bounds the index matrix whatever the set's size
    for start in range(0, resamples, step):
        b = min(step, resamples - start)
        draws[start:start + b] = np.clip(values[rng.integers(0, n, size=(b, n))].mean(axis=1), 0.0, 1.0)
    # Equal values resample to equal means, but their float sums differ in the last bit: say 0, not 3e-17.
    spread = 0.0 if np.ptp(values) == 0 else float(draws.std())
    return {"score": float(np.clip(values.mean(), 0.0, 1.0)), "bootstrap_std": spread, "n": n}


def healthbench_scores(values: SetValues, seed: int, set_name: str) -> dict[str, Any]:
    """One model's HealthBench scores on one set: overall and per tag (module docstring); `unscored` counts the
    examples the reward source could not grade, left out of every score."""
    overall = values.rows.get(REWARD_MEAN, np.full(len(values.index), np.nan))
    per_tag: dict[str, np.ndarray] = {}
    for position, tags in enumerate(values.tags):  # example tags: the whole example's score
        for tag in tags.get(EXAMPLE_TAGS) or []:
            per_tag.setdefault(tag, np.full(len(values.index), np.nan))[position] = overall[position]
    prefix = PART_PREFIX + TAG_PART
    for key, column in values.rows.items():  # rubric tags: the example's items with that tag (as HealthBench,
        if key.startswith(prefix):             # a rubric tag's score wins over an example tag of the same name)
            tag = key[len(prefix):]
            merged = per_tag.setdefault(tag, np.full(len(values.index), np.nan))
            per_tag[tag] = np.where(np.isnan(column), merged, column)
    scored = overall[~np.isnan(overall)]
    out = {**clipped_stats(scored, rng_for(seed, set_name, HEALTHBENCH)), "resamples": HEALTHBENCH_RESAMPLES,
           "unscored": int(np.isnan(overall).sum()), "tags": {}}
    for tag in sorted(per_tag):
        column = per_tag[tag]
        out["tags"][tag] = clipped_stats(column[~np.isnan(column)], rng_for(seed, set_name, HEALTHBENCH, tag))
    return out


def _own_interval(column: np.ndarray, seed: int, set_name: str, resamples: int) -> dict[str, Any]:
    """The mean of one model's per-row values with its 95% percentile interval, on the comparisons' draws."""
    (found,), _ = paired_means([column], [np.zeros_like(column)], seed, (set_name,), resamples)
    return {"value": _finite(found.diff), "low": _finite(found.low), "high": _finite(found.high), "n": found.n}


def _versus(comparisons: dict[str, Any], model: str, key: str) -> dict[str, Any] | None:
    e = (comparisons.get(model) or {}).get(key)
    return None if e is None else {k: e.get(k) for k in ("diff", "low", "high", "n", "verdict")}


def benchmark_scores(eval_sets: dict[str, Any], values: dict[str, dict[str, SetValues]],
                     comparisons: dict[str, Any], seed: int, resamples: int = RESAMPLES) -> dict[str, Any]:
    """results.json's `benchmarks`: {set: {"format", "kind", "metric", "models": {model: scores}}} for every choice
    set and every set read as a benchmark (eval_sets[set]["format"]), in results order."""
    out: dict[str, Any] = {}
    for name, info in eval_sets.items():
        info = info or {}
        fmt_name, kind = info.get("format"), info.get("kind")
        if kind != "choice" and fmt_name is None:
            continue
        entry: dict[str, Any] = {"format": fmt_name, "kind": kind, "models": {}}
        for model, per_set in values.items():
            found = per_set.get(name)
            if found is None or not found.index:
                continue
            if fmt_name == HEALTHBENCH:
                entry["metric"] = "healthbench_score"
                entry["models"][model] = healthbench_scores(found, seed, name)
                continue
            if kind == "choice":
                metric = "accuracy"
            else:
                scored = REWARD_MEAN in found.rows and not np.isnan(found.rows[REWARD_MEAN]).all()
                metric = REWARD_MEAN if scored else "rouge_l"
            entry["metric"] = metric
            if metric not in found.rows:
                continue
            scores = _own_interval(found.rows[metric], seed, name, resamples)
            if kind == "choice":
                scores["wrong"] = float(found.rows["wrong"].mean())
                scores["unanswerable"] = float(found.rows["unanswerable"].mean())
            scores["vs_baseline"] = _versus(comparisons, model, f"{name}/{metric}")
            entry["models"][model] = scores
        if entry["models"]:
            out[name] = entry
    return out


# --- tables and markdown -----------------------------------------------------------------------------------------
def benchmark_table(results: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """One row per (set, model), and for HealthBench one more per tag (W&B and tables/benchmarks.jsonl)."""
    rows: list[list[Any]] = []
    for name, entry in (results.get("benchmarks") or {}).items():
        for model, s in (entry.get("models") or {}).items():
            base = [name, entry.get("format") or "plain", model, entry.get("metric")]
            if entry.get("format") == HEALTHBENCH:
                rows.append(base + [None, s.get("n"), s.get("score"), None, None, s.get("bootstrap_std")]
                            + [None] * 6)
                for tag, t in (s.get("tags") or {}).items():
                    rows.append(base + [tag, t.get("n"), t.get("score"), None, None, t.get("bootstrap_std")]
                                + [None] * 6)
                continue
            v = s.get("vs_baseline") or {}
            rows.append(base + [None, s.get("n"), s.get("value"), s.get("low"), s.get("high"), None, v.get("diff"),
                                v.get("low"), v.get("high"), v.get("verdict"), s.get("wrong"),
                                s.get("unanswerable")])
    return list(BENCHMARK_COLUMNS), rows


def _signed(value: Any) -> str:
    return NONE if value is None else ("+" if value > 0 else "") + fmt(value)


def benchmarks_markdown(results: dict[str, Any]) -> list[str]:
    """report.md's "Benchmarks" section: a score table (choice and judged sets), HealthBench's scores and its
    per-tag scores; [] when results.json has no `benchmarks` (written before they existed)."""
    found = results.get("benchmarks") or {}
    if not found:
        return []
    baseline = results.get("baseline")
    lines = ["## Benchmarks", ""]
    scored = [(n, e) for n, e in found.items() if e.get("format") != HEALTHBENCH]
    if scored:
        rows = []
        for name, entry in scored:
            for model, s in entry["models"].items():
                v = s.get("vs_baseline")
                versus = NONE if v is None else f"{_signed(v.get('diff'))} [{_signed(v.get('low'))}, " \
                                                f"{_signed(v.get('high'))}] {v.get('verdict')}"
                rows.append([name, entry.get("format") or "plain", model + (" (baseline)" if model == baseline else ""),
                             entry.get("metric"), s.get("n"), fmt(s.get("value")),
                             f"[{fmt(s.get('low'))}, {fmt(s.get('high'))}]", versus,
                             NONE if s.get("wrong") is None else fmt(s["wrong"]),
                             NONE if s.get("unanswerable") is None else fmt(s["unanswerable"])])
        lines += md_table(["eval set", "format", "model", "metric", "n", "score", "95% interval", "vs baseline",
                           "wrong % ↓", "unanswerable % ↓"], rows)
        lines += ["", "Choice sets: accuracy %; a multiple-answer question counts only when its set of letters is "
                      "exact. Wrong and unanswerable (no option letter could be read from the output) add up to "
                      "100 − accuracy. The interval resamples the rows; \"vs baseline\" is the paired bootstrap "
                      "of the change.", ""]
    for name, entry in found.items():
        if entry.get("format") != HEALTHBENCH:
            continue
        models = entry["models"]
        lines += md_table(["HealthBench set", "model", "n", "score", "bootstrap std", "unscored"],
                          [[name, m, s.get("n"), fmt(s.get("score")), fmt(s.get("bootstrap_std")), s.get("unscored")]
                           for m, s in models.items()])
        tags = list(dict.fromkeys(t for s in models.values() for t in (s.get("tags") or {})))
        if tags:
            lines += [""] + md_table(["tag", *(f"{m} score ± std (n)" for m in models)],
                                     [[tag, *(_tag_cell((s.get("tags") or {}).get(tag)) for s in models.values())]
                                      for tag in tags])
        lines += ["", f"HealthBench score: the mean of the examples' scores (points of the criteria met / positive "
                      f"points) clipped to [0, 1], with the standard deviation of that mean over "
                      f"{HEALTHBENCH_RESAMPLES} resamples of the examples; per tag over the examples it applies to.",
                  ""]
    return lines


def _tag_cell(t: dict[str, Any] | None) -> str:
    if not t or t.get("score") is None:
        return NONE
    return f"{fmt(t['score'])} ± {fmt(t.get('bootstrap_std'))} ({t.get('n')})"
