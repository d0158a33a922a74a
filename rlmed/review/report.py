"""The evaluation report's "Doctors" section, from the de-blinded labels (rlmed.review.export writes it as
`review/export/doctors.json`; `doctors_markdown` renders it).

- Win rates per model pair (evaluate tasks): a label counts 1 for the model it prefers, 0 for the other, ½ for a
  tie; "both unsafe" is counted on its own and left out of the rate. A task's value is the mean of its labels
  (two on an overlapped task), and the 95% interval is a percentile bootstrap over tasks
  (rlmed.eval.bootstrap.resample_counts, seeded by the review's seed and the pair).
- Judge-doctor agreement: where both answers of a task carry a score from the run's own judge or reward source
  (ai_feedback's scores; evaluate's `reward:` per row), its verdict is the higher score (equal: tie) and is set
  against every a/b/tie label: accuracy and Cohen's kappa over {first, second, tie}, with bootstrap intervals
  drawn by task (rlmed.eval.agreement). For any other judge, `rlmed judge-check review/export/judge_check.jsonl`.
- Inter-annotator agreement on the overlap: tasks labelled by two doctors, agreement and Cohen's kappa over
  {first, second, tie, unsafe}, intervals drawn by task.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from rlmed.eval.agreement import accuracy, bootstrap_agreement, cohen_kappa
from rlmed.eval.bootstrap import CONFIDENCE, RESAMPLES, percentiles, resample_counts
from rlmed.eval.markdown import md_table
from rlmed.review.tasks import AI_FEEDBACK, EVALUATE, Task

FIRST, SECOND, TIE, UNSAFE = "first", "second", "tie", "unsafe"
VALUE = {FIRST: 1.0, SECOND: 0.0, TIE: 0.5}  # the first model's share of a label
JUDGES = {EVALUATE: "evaluate's reward: source (the higher reward wins)",
          AI_FEEDBACK: "ai_feedback's reward: source (the higher score wins)"}


def _interval(values: np.ndarray, seed: int, key: Sequence[str], resamples: int) -> tuple[float | None, float | None]:
    if len(values) == 0:
        return None, None
    means = np.concatenate([counts @ values / len(values)
                            for counts in resample_counts(len(values), resamples, seed, *key)])
    return percentiles(means, CONFIDENCE)


def win_rates(tasks: dict[str, Task], labels: list[dict[str, Any]], seed: int,
              resamples: int = RESAMPLES) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, str], dict[str, list[str]]] = {}
    for label in labels:
        task = tasks[label["task"]]
        if task.source != EVALUATE:
            continue
        key = (task.stage, task.answers[0]["model"], task.answers[1]["model"])
        groups.setdefault(key, {}).setdefault(task.id, []).append(label["verdict"])
    out = []
    for (stage, model, other), per_task in sorted(groups.items()):
        verdicts = [v for vs in per_task.values() for v in vs]
        values = np.array([np.mean([VALUE[v] for v in vs if v != UNSAFE]) for vs in per_task.values()
                           if any(v != UNSAFE for v in vs)], dtype=np.float64)
        low, high = _interval(values, seed, ("doctors", stage, model, other), resamples)
        out.append({"stage": stage, "model": model, "against": other, "tasks": len(values),
                    "labels": len(verdicts), "wins": verdicts.count(FIRST), "ties": verdicts.count(TIE),
                    "losses": verdicts.count(SECOND), "both_unsafe": verdicts.count(UNSAFE),
                    "win_rate": float(values.mean()) if len(values) else None, "low": low, "high": high})
    return out


def judge_verdict(task: Task) -> str | None:
    """The run's own source's verdict on the task, from the scores it gave both answers; None without them."""
    first, second = (a.get("score") for a in task.answers)
    if not all(isinstance(s, (int, float)) and not isinstance(s, bool) and np.isfinite(s) for s in (first, second)):
        return None
    return FIRST if first > second else SECOND if second > first else TIE


def judge_agreement(tasks: dict[str, Task], labels: list[dict[str, Any]], seed: int,
                    resamples: int = RESAMPLES) -> list[dict[str, Any]]:
    out = []
    for source in (EVALUATE, AI_FEEDBACK):
        human, judge, clusters = [], [], []
        for label in labels:
            task = tasks[label["task"]]
            said = judge_verdict(task) if task.source == source else None
            if said is None or label["verdict"] == UNSAFE:
                continue
            human.append(label["verdict"])
            judge.append(said)
            clusters.append(task.id)
        if not human:
            continue
        categories = (FIRST, SECOND, TIE)
        bounds = bootstrap_agreement(human, judge, clusters, categories, seed, ("doctors", "judge", source),
                                     resamples=resamples)
        out.append({"source": source, "judge": JUDGES[source], "labels": len(human), "tasks": len(set(clusters)),
                    "accuracy": accuracy(judge, human), "accuracy_interval": list(bounds["accuracy"]),
                    "kappa": cohen_kappa(human, judge, categories), "kappa_interval": list(bounds["kappa"])})
    return out


def inter_annotator(labels: list[dict[str, Any]], seed: int, resamples: int = RESAMPLES) -> dict[str, Any]:
    per_task: dict[str, list[dict[str, Any]]] = {}
    for label in labels:
        per_task.setdefault(label["task"], []).append(label)
    first, second, ids, pairs = [], [], [], {}
    for tid, mine in sorted(per_task.items()):
        if len(mine) < 2:
            continue
        one, two = sorted(mine, key=lambda r: r["annotator"])[:2]
        first.append(one["verdict"])
        second.append(two["verdict"])
        ids.append(tid)
        name = f"{one['annotator']} & {two['annotator']}"
        pairs[name] = pairs.get(name, 0) + 1
    categories = (FIRST, SECOND, TIE, UNSAFE)
    if not ids:
        return {"tasks": 0}
    bounds = bootstrap_agreement(first, second, ids, categories, seed, ("doctors", "overlap"), resamples=resamples)
    return {"tasks": len(ids), "by_pair": pairs, "agreement": accuracy(first, second),
            "agreement_interval": list(bounds["accuracy"]), "kappa": cohen_kappa(first, second, categories),
            "kappa_interval": list(bounds["kappa"])}


def doctors_section(tasks: dict[str, Task], labels: list[dict[str, Any]], seed: int = 0,
                    resamples: int = RESAMPLES) -> dict[str, Any]:
    """Everything the "Doctors" section shows, from de-blinded labels (rlmed.review.export.deblind rows)."""
    labels = [label for label in labels if label["task"] in tasks]
    return {"labels": len(labels), "tasks": len({label["task"] for label in labels}),
            "annotators": sorted({label["annotator"] for label in labels}), "seed": seed, "resamples": resamples,
            "win_rates": win_rates(tasks, labels, seed, resamples),
            "judge_agreement": judge_agreement(tasks, labels, seed, resamples),
            "inter_annotator": inter_annotator(labels, seed, resamples)}


def run_section(run_dir: Any) -> dict[str, Any] | None:
    """The section for a run's review as it stands now (read from its database), or None without a review: what
    the evaluate report calls, so report.md shows the labels given so far without an export first."""
    from pathlib import Path

    from rlmed.review.export import deblind
    from rlmed.review.store import ReviewStore, db_path

    path = db_path(Path(run_dir))
    if not path.is_file():
        return None
    store = ReviewStore(path)
    try:
        tasks = {t.id: t for t in store.tasks()}
        rows = [deblind(tasks[label["task_id"]], label) for label in store.labels() if label["task_id"] in tasks]
        seed = int(store.settings().get("seed", 0))
    finally:
        store.close()
    return doctors_section(tasks, rows, seed=seed)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def _span(bounds: Sequence[float | None], percent: bool = True) -> str:
    low, high = bounds
    if low is None or high is None:
        return "–"
    return f"[{_pct(low)}, {_pct(high)}]" if percent else f"[{low:+.2f}, {high:+.2f}]"


def _kappa(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def doctors_markdown(section: dict[str, Any]) -> list[str]:
    """The "## Doctors" section of report.md (empty when there are no labels)."""
    if not section or not section.get("labels"):
        return []
    lines = ["## Doctors", "",
             f"{section['labels']} labels by {len(section['annotators'])} doctors "
             f"({', '.join(section['annotators'])}) on {section['tasks']} tasks, blind (model names hidden, sides "
             f"drawn per task). Intervals: 95% bootstrap over tasks.", ""]
    if section["win_rates"]:
        rows = [[r["stage"], r["model"], r["against"], r["tasks"], r["wins"], r["ties"], r["losses"],
                 r["both_unsafe"], _pct(r["win_rate"]), _span((r["low"], r["high"]))] for r in section["win_rates"]]
        lines += ["Win rates (a tie counts ½; \"both unsafe\" left out of the rate):", ""]
        lines += md_table(["eval stage", "model", "against", "tasks", "wins", "ties", "losses", "both unsafe",
                           "win rate", "95% interval"], rows) + [""]
    if section["judge_agreement"]:
        rows = [[r["judge"], r["labels"], r["tasks"], _pct(r["accuracy"]), _span(r["accuracy_interval"]),
                 _kappa(r["kappa"]), _span(r["kappa_interval"], percent=False)] for r in section["judge_agreement"]]
        lines += ["Judge-doctor agreement (verdicts over A better / B better / tie):", ""]
        lines += md_table(["judge", "labels", "tasks", "accuracy", "95% interval", "Cohen's κ", "95% interval"],
                          rows) + [""]
    overlap = section["inter_annotator"]
    if overlap.get("tasks"):
        lines += ["Between doctors, on the tasks two of them labelled:", ""]
        lines += md_table(["tasks", "pairs of doctors", "agreement", "95% interval", "Cohen's κ", "95% interval"],
                          [[overlap["tasks"], ", ".join(f"{k}: {v}" for k, v in overlap["by_pair"].items()),
                            _pct(overlap["agreement"]), _span(overlap["agreement_interval"]),
                            _kappa(overlap["kappa"]), _span(overlap["kappa_interval"], percent=False)]]) + [""]
    return lines
