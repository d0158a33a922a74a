"""Stage `evaluate`: the run's models side by side on eval sets, as the papers in our lineage report them.

Each file of `data` is one eval set, its kind read from its rows (methods.md §7):
- choice rows (`question`, `options`, `answer` letter): multiple-choice accuracy with robust answer extraction
  (zero-shot, or `few_shot` solved examples taken from the set's first rows, which are then not scored, laid
  out plainly or in MedS-Ins' case template);
- hit-rate rows (`question`, `items`): QiZhen hit-rate criteria 1-3 against the expected items;
- anything else is a prompt with the doctor's reply (dialogues, `prompt` + `reference`, ...): BLEU-1..4, GLEU,
  ROUGE-1/2/L and Distinct-1/2 on jieba tokens; a `reward:` source scores the answers too; `judge` (an LLM judge
  component) compares every model with the baseline in both answer orders (win/tie/loss).
Generation is sharded across ranks (greedy by default) and saved (generations/<model>.jsonl, rows carrying what
their metric needs: rlmed.eval.generations) before anything is scored. With a `reward:` source every rank
scores the rows it generated and the scores are saved in those rows too; the main rank computes the metrics
and reward means from the merged rows, judges and reports. Eval rows
that also occur, exactly or nearly, in a data input of any other stage of the run are reported (contamination).
The stage writes results.json, report.md with PNG plots (`rlmed report <run_dir>` regenerates it;
`--recompute` recomputes the metrics from the saved generations first), and the comparison table to W&B.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rlmed.stages.base import Input, StageContext, StageSpec


@dataclass(kw_only=True)
class Args:
    baseline: str | None = None
    """The model the others are compared with (its name: the stage id of `$id.model`, else the folder name);
    default the first model."""
    max_new_tokens: int = 128
    temperature: float = 0.0
    """0: greedy decoding."""
    top_p: float = 1.0
    batch_size: int = 8
    max_rows: int | None = None
    """Rows used per eval set (the first N); None: all."""
    few_shot: int = 0
    """Solved examples put before each multiple-choice question (taken from the set's first rows)."""
    choice_template: Literal["plain", "meds_ins"] = "plain"
    """Few-shot layout for multiple choice: plain (questions with their answers), or MedS-Ins' case template."""
    judge: dict[str, Any] | None = None
    """An LLM judge component ({_component_: reward.judge.LLMJudge, ...}) for pairwise win/tie/loss."""
    contamination_threshold: float = 0.8
    dtype: str = "auto"
    seed: int = 42
    """Sampling seed (used when temperature > 0)."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.few_shot < 0:
            raise ValueError("max_new_tokens and batch_size must be at least 1, few_shot at least 0")
        if not 0.0 < self.contamination_threshold <= 1.0:
            raise ValueError("contamination_threshold must be within (0, 1]")
        if self.choice_template == "meds_ins" and self.few_shot < 1:
            raise ValueError("choice_template meds_ins needs few_shot >= 1 (its cases are the solved examples)")


MEDS_INS_INSTRUCTION = "请根据题目从选项中选出唯一正确的答案，只输出选项字母。"


def model_name(path: str) -> str:
    """`run/sft/model` -> "sft", `run/sft/merged` -> "sft.merged", any other folder -> its name."""
    p = Path(path)
    if p.name == "model":
        return p.parent.name
    if p.name == "merged":
        return f"{p.parent.name}.merged"
    return p.name or str(path)


@dataclass
class EvalRow:
    messages: list[dict[str, str]]
    reference: str | None = None
    options: list[str] | None = None
    answer: str | None = None
    items: list[str] | None = None

    @property
    def text(self) -> str:
        """What the contamination check looks for in training data: the question (last user turn)."""
        return self.messages[-1]["content"]


def set_kind(rows: list[dict[str, Any]]) -> str:
    if rows and all("options" in r and "answer" in r for r in rows):
        return "choice"
    if rows and all("items" in r for r in rows):
        return "hitrate"
    return "generation"


def load_eval_set(source: Any, args: Args) -> tuple[str, list[EvalRow]]:
    """One eval set's kind and rows (few-shot examples already folded into the choice prompts)."""
    from rlmed.data.dialogues import as_doctor_prompts
    from rlmed.data.sources import source_records
    from rlmed.eval.choice import few_shot_prompt, meds_ins_prompt, zero_shot_prompt

    records = source_records(source)
    kind = set_kind([r.row for r in records])
    rows: list[EvalRow] = []
    if kind == "choice":
        shots = [{"question": r.row["question"], "options": r.row["options"], "answer": r.row["answer"]}
                 for r in records[: args.few_shot]]

        def prompt_of(row: dict[str, Any]) -> str:
            if args.choice_template == "meds_ins":
                cases = [(zero_shot_prompt(e["question"], e["options"]), e["answer"]) for e in shots]
                return meds_ins_prompt(MEDS_INS_INSTRUCTION, zero_shot_prompt(row["question"], row["options"]), cases)
            if shots:
                return few_shot_prompt(row["question"], row["options"], shots)
            return zero_shot_prompt(row["question"], row["options"])

        for r in records[args.few_shot:]:
            prompt = prompt_of(r.row)
            rows.append(EvalRow([{"role": "user", "content": prompt}], options=list(r.row["options"]),
                                answer=str(r.row["answer"]).strip()))
    elif kind == "hitrate":
        rows = [EvalRow([{"role": "user", "content": r.row["question"]}], items=list(r.row["items"]))
                for r in records]
    else:
        rows = [EvalRow(p.messages, reference=p.reference) for r in records for p in as_doctor_prompts(r, source.format)]
    return kind, rows[: args.max_rows] if args.max_rows is not None else rows


def training_texts(run_dir: Path, own_id: str):
    """(file:line, text) of every row of every data input of the run's other stages, from their manifests."""

    from rlmed.artifacts import read_manifest
    from rlmed.data.records import read_records

    seen: set[str] = set()
    for stage_dir in sorted(p for p in run_dir.iterdir() if p.is_dir() and p.name != own_id):
        manifest = read_manifest(stage_dir)
        if not manifest or manifest.get("kind") == "evaluate":
            continue
        for value in (manifest.get("inputs") or {}).values():
            for item in value if isinstance(value, list) else []:
                path = item.get("path") if isinstance(item, dict) else None
                if not isinstance(path, str) or path in seen or not Path(path).is_file():
                    continue
                seen.add(path)
                for record in read_records(path):
                    yield f"{path}:{record.line}", " ".join(_strings(record.row))


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def saved_rows(mine: list[tuple[str, int, str, EvalRow]], texts: list[str]) -> list[dict[str, Any]]:
    """This rank's answers as generations rows, each with what its metric is computed from."""
    from rlmed.eval.generations import saved_row

    return [saved_row(s, i, kind, row.messages, text, reference=row.reference, options=row.options,
                      answer_key=row.answer, items=row.items) for (s, i, kind, row), text in zip(mine, texts)]


def merge_shards(ctx: StageContext, name: str, shard: list[dict[str, Any]], set_order: list[str]
                 ) -> list[dict[str, Any]]:
    """Every rank writes its rows to generations/<name>.rank<k>.jsonl (its own file: no two ranks write one
    file); after a barrier the main rank merges them in set then row order into generations/<name>.jsonl and
    returns them. Other ranks get []. Every rank must call it (the barrier is a collective)."""
    from rlmed import dist
    from rlmed.artifacts import atomic_write_jsonl, read_jsonl
    from rlmed.eval.generations import GENERATIONS

    out_dir = ctx.stage_dir / GENERATIONS
    world = dist.world_size()
    if world > 1:
        atomic_write_jsonl(out_dir / f"{name}.rank{dist.rank()}.jsonl", shard)
        dist.barrier()
        if not dist.is_main():
            return []
        shard = [r for k in range(world) for r in read_jsonl(out_dir / f"{name}.rank{k}.jsonl")]
    order = {s: n for n, s in enumerate(set_order)}
    merged = sorted(shard, key=lambda r: (order[r["set"]], r["index"]))
    atomic_write_jsonl(out_dir / f"{name}.jsonl", merged)
    return merged


def generate_sharded(ctx: StageContext, name: str, path: str, sets: dict[str, tuple[str, list[EvalRow]]],
                     settings: Any, source: Any = None) -> list[dict[str, Any]]:
    """Every rank answers its share (rows rank::world of every set) and, given a reward source, scores that
    share itself (its own judge-cache shard: rlmed.rl.sources). The merged rows are saved before scoring, so a
    failing source costs no generation, and again with the scores. Returns the merged rows on the main rank,
    [] on the others."""
    from rlmed import dist
    from rlmed.eval.generations import add_reward_scores
    from rlmed.generation import generate_hf

    rank, world = dist.rank(), dist.world_size()
    mine = [(s, i, kind, row) for s, (kind, rows) in sets.items() for i, row in enumerate(rows)][rank::world]
    texts = [a[0] for a in generate_hf(path, [row.messages for *_, row in mine], settings, seed=ctx.seed)]
    shard = saved_rows(mine, texts)
    merged = merge_shards(ctx, name, shard, list(sets))
    if source is None:
        return merged
    return merge_shards(ctx, name, add_reward_scores(source, shard), list(sets))


def run(ctx: StageContext, inputs: dict[str, Any], args: Args) -> dict[str, Any]:
    from types import SimpleNamespace

    from rlmed import dist
    from rlmed.artifacts import atomic_write_json
    from rlmed.eval.contamination import find_contamination
    from rlmed.eval.generations import answers_by_set, model_metrics, reward_means
    from rlmed.eval.pairwise import PairRow, compare_models_sync
    from rlmed.eval.report import render_report, tables
    from rlmed.rl.sources import build_reward_source

    models = {model_name(p): p for p in inputs["models"]}
    if len(models) != len(inputs["models"]):
        raise ValueError(f"two models share a name ({', '.join(models)}); evaluate each folder once")
    baseline = args.baseline or next(iter(models))
    if baseline not in models:
        raise ValueError(f"args.baseline '{baseline}' is not one of the models: {', '.join(models)}")
    sets = {Path(s.path).stem: load_eval_set(s, args) for s in inputs["data"]}
    settings = SimpleNamespace(samples_per_prompt=1, temperature=args.temperature, top_p=args.top_p,
                               batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, dtype=args.dtype)
    generation_sets = [s for s, (kind, _) in sets.items() if kind == "generation"]
    # Built on every rank: each scores its own rows, a judge appending to its own cache shard (the rank).
    source = build_reward_source(ctx.reward, ctx.run_dir) if ctx.reward is not None and generation_sets else None

    saved = {name: generate_sharded(ctx, name, path, sets, settings, source) for name, path in models.items()}
    if not dist.is_main():
        return {}  # the main rank computes the metrics, judges and reports

    kinds = {s: kind for s, (kind, _) in sets.items()}
    metrics = {name: model_metrics(rows, kinds) for name, rows in saved.items()}
    answers = {name: answers_by_set(rows) for name, rows in saved.items()}
    results: dict[str, Any] = {
        "baseline": baseline,
        "models": {name: {"path": path, "stage": Path(path).parent.name} for name, path in models.items()},
        "eval_sets": {s: {"rows": len(rows), "kind": kind} for s, (kind, rows) in sets.items()},
        "metrics": metrics,
    }
    if source is not None:
        results["reward"] = {name: reward_means(rows) for name, rows in saved.items()}
    if args.judge is not None and generation_sets:
        judge = build_reward_source(args.judge, ctx.run_dir)
        results["pairwise"] = {}
        for name in models:
            if name == baseline:
                continue
            pairs = [PairRow(r.messages, answers[name][s][i], answers[baseline][s][i], r.reference, id=f"{s}:{i}")
                     for s in generation_sets for i, r in enumerate(sets[s][1])]
            results["pairwise"][name] = compare_models_sync(judge, pairs, model=name, baseline=baseline).summary()
    # Every set's rows against one pass over the other stages' data (a row's best match does not depend on the
    # other eval rows, so this equals one pass per set, without re-reading the training files per set).
    located = [(s, i, row.text) for s, (_, rows) in sets.items() for i, row in enumerate(rows)]
    matches = [{"eval_set": located[m.eval_index][0], "row": located[m.eval_index][1], "kind": m.kind,
                "source": m.source, "similarity": m.similarity}
               for m in find_contamination([text for *_, text in located],
                                           training_texts(ctx.run_dir, ctx.stage_id),
                                           threshold=args.contamination_threshold)]
    results["contamination"] = matches
    atomic_write_json(ctx.stage_dir / "results.json", results)
    render_report(ctx.run_dir, ctx.stage_id)
    # The report's tables also go to tables/<name>.jsonl and, with W&B on, to W&B tables.
    for table_name, (columns, table_rows) in tables(results).items():
        if table_rows:
            ctx.metrics.log_table(table_name, [dict(zip(columns, row)) for row in table_rows])

    out: dict[str, Any] = {f"{name}/{key}": value for name, values in metrics.items() for key, value in values.items()}
    for name, summary in results.get("pairwise", {}).items():
        out[f"{name}/win_rate_vs_{baseline}"] = summary["win_rate"]
    out.update(models=len(models), eval_sets=len(sets), contaminated_rows=len(matches),
               contamination=matches[:50])  # the first matches in the manifest too; all in results.json
    return out


SPEC = StageSpec(
    kind="evaluate",
    args=Args,
    inputs={
        "models": Input("model", many=True, doc="the models to compare: $stage.model references or folders"),
        "data": Input("data", many=True, doc="eval sets, one per file: dialogues with references, choice, hit-rate"),
    },
    outputs={"results": "results.json", "report": "report.md"},
    run=run,
    reward="optional",
    doc=__doc__,
)
