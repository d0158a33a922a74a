"""`rlmed review export RUN_DIR`: the doctors' labels, de-blinded, as training rows the recipe stages read.

Written to `<run_dir>/review/export/` (0600 files: patient text), each whole and renamed into place:

- `pairs.jsonl`: {"messages", "chosen", "rejected", "reference", "source": "doctors", ...} per task whose
  labels say one answer is better (A better / B better) and agree when two doctors labelled it: pairwise data
  for `reward_model` and `dpo` (rlmed.data.pairwise). A tie or "both unsafe" makes no pair.
- `kto.jsonl`: {"prompt": messages, "completion": [assistant message], "label": true|false}, trl's unpaired
  preference rows (KTO): the better answer desirable, the other not; "both unsafe" makes both undesirable; a
  doctor's corrected answer is desirable. Ties say nothing about either answer alone and give no row.
- `sft.jsonl`: {"messages": prompt + the corrected answer} per corrected answer (each annotator's).
- `judge_check.jsonl`: every a/b/tie label as `rlmed judge-check` reads pairwise labels (answer_a/answer_b in
  the task's fixed order, not the side shown), so any judge can be measured against the doctors.
- `labels.jsonl`: every label de-blinded (which model was shown as A, the winner, scores per model), and
  `doctors.json`: the report's "Doctors" section (rlmed.review.report).

Two doctors who disagree on an overlapped task (one says A, the other B or tie) make no pair and no KTO rows
for it; the count is reported as `conflicts`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlmed.artifacts import atomic_write_json, atomic_write_jsonl
from rlmed.review.store import REVIEW_DIR, ReviewStore, db_path
from rlmed.review.tasks import Task

EXPORT_DIR = "export"
FILES = ("pairs.jsonl", "kto.jsonl", "sft.jsonl", "judge_check.jsonl", "labels.jsonl", "doctors.json")
FIRST, SECOND, TIE, UNSAFE = "first", "second", "tie", "unsafe"  # a verdict in the task's fixed answer order


class ExportError(RuntimeError):
    """No review to export; the message says where it looked."""


def canonical(task: Task, verdict: str) -> str:
    """A label's verdict ("a"/"b" as shown) in the task's fixed order: which of answers[0], answers[1] won."""
    if verdict in (TIE, UNSAFE):
        return verdict
    shown_first = verdict == "a"
    return FIRST if shown_first != task.swapped else SECOND


def deblind(task: Task, label: dict[str, Any]) -> dict[str, Any]:
    shown_a, shown_b = task.shown()
    verdict = canonical(task, label["verdict"])
    winner = {FIRST: task.answers[0]["model"], SECOND: task.answers[1]["model"]}.get(verdict)
    scores = {side: values for side, values in (label.get("scores") or {}).items()}
    by_model = {m["model"]: scores[side] for side, m in (("A", shown_a), ("B", shown_b)) if side in scores}
    return {"task": task.id, "source": task.source, "stage": task.stage, "item": task.item,
            "annotator": label["annotator"], "verdict": verdict, "shown": label["verdict"],
            "models": [a["model"] for a in task.answers], "shown_as_a": shown_a["model"], "winner": winner,
            "scores": by_model or None, "corrected": label.get("corrected"), "note": label.get("note"),
            "revision": label["revision"], "updated": label["updated"]}


def consensus(verdicts: list[str]) -> str | None:
    """The task's verdict when every label agrees, else None (a conflict)."""
    return verdicts[0] if verdicts and all(v == verdicts[0] for v in verdicts) else None


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def export_rows(tasks: dict[str, Task], labels: list[dict[str, Any]]
                ) -> tuple[dict[str, list[dict[str, Any]]], int]:
    """The rows of every file (the pure part of export), and how many tasks' labels conflict."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for label in labels:
        if label["task_id"] in tasks:
            by_task.setdefault(label["task_id"], []).append(label)
    out: dict[str, list[dict[str, Any]]] = {"pairs": [], "kto": [], "sft": [], "judge_check": [], "labels": []}
    conflicts = 0
    for tid, mine in by_task.items():
        task = tasks[tid]
        rows = [deblind(task, label) for label in sorted(mine, key=lambda r: r["annotator"])]
        out["labels"] += rows
        prompt = task.prompt
        for row in rows:
            if row["verdict"] != UNSAFE:
                out["judge_check"].append({
                    "prompt": prompt, "answer_a": task.answers[0]["text"], "answer_b": task.answers[1]["text"],
                    "label": {FIRST: "a", SECOND: "b", TIE: "tie"}[row["verdict"]], "reference": task.reference,
                    "annotator": row["annotator"], "id": tid})
            if row["corrected"]:
                out["sft"].append({"messages": [*prompt, *_assistant(row["corrected"])], "task": tid,
                                   "annotator": row["annotator"], "source": "doctors"})
                out["kto"].append({"prompt": prompt, "completion": _assistant(row["corrected"]), "label": True,
                                   "task": tid, "annotator": row["annotator"], "kind": "corrected"})
        agreed = consensus([r["verdict"] for r in rows])
        if agreed is None:
            conflicts += 1
            continue
        annotators = [r["annotator"] for r in rows]
        if agreed in (FIRST, SECOND):
            chosen, rejected = (task.answers if agreed == FIRST else task.answers[::-1])
            out["pairs"].append({"messages": prompt, "chosen": chosen["text"], "rejected": rejected["text"],
                                 "reference": task.reference, "source": "doctors", "task": tid,
                                 "annotators": annotators, "chosen_model": chosen["model"],
                                 "rejected_model": rejected["model"]})
            out["kto"] += [{"prompt": prompt, "completion": _assistant(answer["text"]), "label": good, "task": tid,
                            "annotators": annotators, "kind": "preferred" if good else "not_preferred"}
                           for answer, good in ((chosen, True), (rejected, False))]
        elif agreed == UNSAFE:
            out["kto"] += [{"prompt": prompt, "completion": _assistant(answer["text"]), "label": False, "task": tid,
                            "annotators": annotators, "kind": "unsafe"} for answer in task.answers]
    return out, conflicts


def export(run_dir: Path, out: Path | None = None) -> dict[str, Any]:
    """Write the files; return the counts printed by the CLI."""
    from rlmed.review.report import doctors_section

    path = db_path(run_dir)
    if not path.is_file():
        raise ExportError(f"{path}: no review here; start one with `rlmed review {run_dir}`")
    store = ReviewStore(path)
    try:
        tasks = {t.id: t for t in store.tasks()}
        labels = store.labels()
        settings = store.settings()
    finally:
        store.close()
    rows, conflicts = export_rows(tasks, labels)
    folder = Path(out) if out is not None else Path(run_dir) / REVIEW_DIR / EXPORT_DIR
    for name in ("pairs", "kto", "sft", "judge_check", "labels"):
        atomic_write_jsonl(folder / f"{name}.jsonl", rows[name], private=True)
    section = doctors_section(tasks, rows["labels"], seed=int(settings.get("seed", 0)))
    atomic_write_json(folder / "doctors.json", section, private=True)
    kto = rows["kto"]
    return {"folder": str(folder), "tasks": len(tasks), "labels": len(labels),
            "labelled_tasks": len({r["task"] for r in rows["labels"]}), "pairs": len(rows["pairs"]),
            "kto_desirable": sum(r["label"] for r in kto), "kto_undesirable": sum(not r["label"] for r in kto),
            "sft": len(rows["sft"]), "judge_check": len(rows["judge_check"]),
            "conflicts": conflicts}
