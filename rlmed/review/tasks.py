"""Review tasks built from what a run left on disk, shown blind, and who labels which.

A task is one prompt with two answers to compare:

- evaluate: every completed `evaluate` stage's `generations/<model>.jsonl` (rlmed.eval.generations); for each
  pair of models, every generation row both answered (choice and hit-rate rows have exact metrics and are left
  out), unless the two answers are the same text or one is empty (nothing for a doctor to choose). A row answered
  several times (`samples_per_prompt`) is compared on its first answer, the one saved as `answer`.
- ai_feedback: every completed `ai_feedback` stage's `candidates.jsonl`; per prompt, the pair the AI feedback
  kept (pairs.jsonl: its chosen and rejected answer), so the doctors' labels measure the feedback itself, or,
  for a prompt without a pair, its first two distinct non-empty candidates. The score each answer got
  (scored.jsonl) is kept, hidden, for the judge-doctor agreement.

A task's canonical `answers` are in a fixed order (model order; the AI's chosen first). Which of them is shown
as A is drawn per task by a generator seeded with (seed, task id), so it depends neither on the other tasks nor
on the order they are built in, and is recorded with the task (`swapped`). Model names and scores never leave
the server: the page gets `view(task)`.

Assignment: with `overlap` = s, round(s × tasks) tasks go to two annotators, the rest to one, in a seeded shuffle
dealt round-robin, so loads differ by at most one task per kind. The overlapped tasks come first in every queue,
so the inter-annotator agreement has data even when the annotators stop early.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rlmed.artifacts import read_jsonl, read_manifest

logger = logging.getLogger(__name__)

EVALUATE, AI_FEEDBACK = "evaluate", "ai_feedback"
GENERATIONS = "generations"  # rlmed.eval.generations.GENERATIONS: the folder evaluate saves answers in
SIDES = ("A", "B")


class TaskError(ValueError):
    """The run cannot give review tasks; the message names the file or setting at fault."""


@dataclass
class Task:
    """One comparison. `answers`: [{"model", "text", "score"}] in canonical order; A = answers[1] if swapped."""

    id: str
    source: str
    stage: str
    item: str  # "<eval set>:<row index>" or the ai_feedback prompt id
    prompt: list[dict[str, Any]]
    answers: list[dict[str, Any]]
    reference: str | None = None
    show_reference: bool = True
    swapped: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def shown(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(answer shown as A, answer shown as B)."""
        first, second = self.answers
        return (second, first) if self.swapped else (first, second)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "source": self.source, "stage": self.stage, "item": self.item, "prompt": self.prompt,
                "answers": self.answers, "reference": self.reference, "show_reference": self.show_reference,
                "swapped": self.swapped, "extra": self.extra}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Task":
        return cls(**data)


def task_id(source: str, stage: str, item: str, models: Sequence[str]) -> str:
    """Stable across runs of `rlmed review`: what is compared, never the answers' text (a re-generated answer
    of the same row and models is the same task)."""
    key = json.dumps([source, stage, item, list(models)], ensure_ascii=False)
    return f"{source[0]}-{hashlib.sha256(key.encode('utf-8')).hexdigest()[:16]}"


def side_swapped(seed: int, tid: str) -> bool:
    return random.Random(f"{seed}:{tid}").random() < 0.5


def view(task: Task, criteria: Sequence[dict[str, str]]) -> dict[str, Any]:
    """What the page shows: prompt, the reference when the task shows one, answers A and B; no model, no score."""
    a, b = task.shown()
    return {"id": task.id, "prompt": [{"role": str(m.get("role", "")), "content": str(m.get("content", ""))}
                                      for m in task.prompt],
            "reference": task.reference if task.show_reference else None,
            "answers": {"A": a["text"], "B": b["text"]}, "criteria": list(criteria)}


# --- reading the run ---------------------------------------------------------------------------------------------
def completed_stages(run_dir: Path, kind: str) -> list[Path]:
    """Folders of the run's completed stages of `kind` (manifest present), by name: a stage still running or one
    that crashed may hold half its files."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TaskError(f"{run_dir}: no such run folder")
    found = []
    for stage_dir in sorted(p for p in run_dir.iterdir() if p.is_dir()):
        manifest = read_manifest(stage_dir)
        if manifest is not None and manifest.get("kind") == kind:
            found.append(stage_dir)
    return found


def _usable(text: Any) -> bool:
    return isinstance(text, str) and bool(text.strip())


def evaluate_tasks(stage_dir: Path, show_reference: bool) -> tuple[list[Task], dict[str, int]]:
    folder = stage_dir / GENERATIONS
    # <model>.rank<k>.jsonl are a multi-rank run's shards, merged into <model>.jsonl
    files = sorted(p for p in folder.glob("*.jsonl") if ".rank" not in p.name) if folder.is_dir() else []
    order = _model_order(stage_dir, [p.stem for p in files])
    rows = {p.stem: {(r["set"], r["index"]): r for r in read_jsonl(p) if r.get("kind") == "generation"}
            for p in files}
    tasks, counts = [], {"same_answers": 0, "empty_answers": 0}
    for first, second in itertools.combinations(order, 2):
        for key in sorted(set(rows[first]) & set(rows[second]), key=lambda k: (str(k[0]), k[1])):
            one, two = rows[first][key], rows[second][key]
            if not (_usable(one["answer"]) and _usable(two["answer"])):
                counts["empty_answers"] += 1
                continue
            if one["answer"].strip() == two["answer"].strip():
                counts["same_answers"] += 1
                continue
            item = f"{key[0]}:{key[1]}"
            tasks.append(Task(
                id=task_id(EVALUATE, stage_dir.name, item, [first, second]), source=EVALUATE, stage=stage_dir.name,
                item=item, prompt=one["prompt"], reference=one.get("reference"), show_reference=show_reference,
                answers=[{"model": first, "text": one["answer"], "score": one.get("reward")},
                         {"model": second, "text": two["answer"], "score": two.get("reward")}],
                extra={"set": key[0], "index": key[1]}))
    return tasks, counts


def _model_order(stage_dir: Path, names: list[str]) -> list[str]:
    """results.json's model order (baseline first when it names one), else by name: pairs read (model, other)."""
    try:
        results = json.loads((stage_dir / "results.json").read_text(encoding="utf-8"))
        listed = [m for m in results.get("models", {}) if m in names]
        baseline = results.get("baseline")
        if baseline in listed:
            listed = [baseline] + [m for m in listed if m != baseline]
    except (OSError, ValueError, AttributeError):
        listed = []
    return listed + sorted(set(names) - set(listed))


def feedback_tasks(stage_dir: Path, show_reference: bool) -> tuple[list[Task], dict[str, int]]:
    path = stage_dir / "candidates.jsonl"
    if not path.is_file():
        return [], {}
    candidates = read_jsonl(path)
    scores = {}
    if (stage_dir / "scored.jsonl").is_file():
        scores = {(r["prompt_id"], r["sample"]): r.get("score") for r in read_jsonl(stage_dir / "scored.jsonl")}
    ai_pairs = {}
    if (stage_dir / "pairs.jsonl").is_file():
        ai_pairs = {r["prompt_id"]: r for r in read_jsonl(stage_dir / "pairs.jsonl") if "prompt_id" in r}
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in candidates:
        groups.setdefault(str(row["prompt_id"]), []).append(row)
    tasks, counts = [], {"too_few_answers": 0}
    for prompt_id, rows in groups.items():
        picked = _feedback_pair(rows, ai_pairs.get(prompt_id))
        if picked is None:
            counts["too_few_answers"] += 1
            continue
        (one, two), from_ai = picked
        samples = [f"sample{one['sample']}", f"sample{two['sample']}"]
        answers = [{"model": f"{stage_dir.name}:{name}", "text": r["completion"],
                    "score": scores.get((prompt_id, r["sample"]))} for name, r in zip(samples, (one, two))]
        tasks.append(Task(
            id=task_id(AI_FEEDBACK, stage_dir.name, prompt_id, samples), source=AI_FEEDBACK, stage=stage_dir.name,
            item=prompt_id, prompt=one["prompt"], reference=one.get("reference"), show_reference=show_reference,
            answers=answers, extra={"ai_pair": from_ai}))
    return tasks, counts


def _feedback_pair(rows: list[dict[str, Any]], ai_pair: dict[str, Any] | None):
    """(chosen, rejected) of the AI's pair when its answers are among the candidates, else the first two distinct
    non-empty candidates; None when there are not two. The flag says which."""
    usable = [r for r in sorted(rows, key=lambda r: r["sample"]) if _usable(r["completion"])]
    if ai_pair is not None:
        chosen = next((r for r in usable if r["completion"] == ai_pair["chosen"]), None)
        rejected = next((r for r in usable if r["completion"] == ai_pair["rejected"]), None)
        if chosen is not None and rejected is not None and chosen is not rejected:
            return (chosen, rejected), True
    for one, two in itertools.combinations(usable, 2):
        if one["completion"].strip() != two["completion"].strip():
            return (one, two), False
    return None


def build_tasks(run_dir: Path, seed: int = 0, show_reference: bool = True, max_tasks: int | None = None,
                sources: Sequence[str] = (EVALUATE, AI_FEEDBACK)) -> tuple[list[Task], dict[str, Any]]:
    """Every task the run offers (sides drawn), and counts of what was left out and why. `max_tasks` keeps a
    seeded sample of that size, in the original order."""
    tasks: list[Task] = []
    summary: dict[str, Any] = {}
    builders = {EVALUATE: evaluate_tasks, AI_FEEDBACK: feedback_tasks}
    for source in sources:
        for stage_dir in completed_stages(run_dir, source):
            found, counts = builders[source](stage_dir, show_reference)
            tasks += found
            summary[stage_dir.name] = {"tasks": len(found), **counts}
    if max_tasks is not None and len(tasks) > max_tasks:
        keep = set(random.Random(f"{seed}:max_tasks").sample(range(len(tasks)), max_tasks))
        tasks = [t for i, t in enumerate(tasks) if i in keep]
    seen: set[str] = set()
    for t in tasks:
        if t.id in seen:
            raise TaskError(f"two review tasks share the id {t.id} ({t.source} {t.stage} {t.item})")
        seen.add(t.id)
        t.swapped = side_swapped(seed, t.id)
    return tasks, summary


# --- who labels what ---------------------------------------------------------------------------------------------
def assign(task_ids: Sequence[str], annotators: Sequence[str], overlap: float, seed: int
           ) -> dict[str, list[str]]:
    """annotator -> their queue of task ids. round(overlap × tasks) tasks go to two annotators (first in every
    queue), the others to one; both dealt round-robin over a seeded shuffle."""
    if not annotators:
        raise TaskError("no annotators: give --annotators alice,bob (or a file with one name a line)")
    if not 0.0 <= overlap <= 1.0:
        raise TaskError(f"--overlap must be within 0..1, got {overlap}")
    if overlap > 0 and len(annotators) < 2:
        raise TaskError(f"--overlap {overlap} needs at least two annotators, got {list(annotators)}")
    order = list(task_ids)
    random.Random(f"{seed}:assign").shuffle(order)
    shared = round(overlap * len(order))
    n = len(annotators)
    queues: dict[str, list[str]] = {a: [] for a in annotators}
    for i, tid in enumerate(order):
        queues[annotators[i % n]].append(tid)
        if i < shared:
            # The second annotator rotates too, so every pair of annotators shares some tasks (n > 2).
            queues[annotators[(i + 1 + (i // n) % (n - 1)) % n]].append(tid)
    return queues


def read_annotators(value: str) -> list[str]:
    """`alice,bob` or a file with one name a line (blank lines and # comments skipped). Names are what the
    export records, so they must be distinct and plain: letters, digits, `_`, `-`, `.`."""
    path = Path(value)
    names = ([line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
             if path.is_file() else value.split(","))
    names = [n.strip() for n in names if n.strip()]
    bad = [n for n in names if not all(c.isalnum() or c in "_-." for c in n) or len(n) > 64]
    if bad:
        raise TaskError(f"annotator names may hold letters, digits, '_', '-' and '.' only (64 at most): {bad}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise TaskError(f"annotator names must be distinct: {dupes}")
    return names
