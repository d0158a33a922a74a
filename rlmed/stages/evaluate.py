"""Stage `evaluate`: the run's models side by side on eval sets, as the papers in our lineage report them.

Each file of `data` is one eval set whose kind follows its rows (methods.md §7): multiple choice (accuracy, the
letter read from a generated answer or the option scored by log-likelihood; wrong and unanswerable outputs
counted apart), QiZhen hit-rate rows, or prompts with the doctor's reply (BLEU, GLEU, ROUGE, Distinct on jieba
tokens; optionally a `reward:` source and a pairwise `judge` against the baseline). A set in a public benchmark's
layout (CMB-Exam, CMExam, MedQA, CMMLU, MedS-Bench, HealthBench, CMB-Clin: its source's `format:`, or detected
from its columns) is read and prompted as that benchmark does (rlmed.eval.benchmarks) and scored as it reports
(rlmed.eval.benchmark_scores). Answers are generated sharded across ranks and saved before anything is
scored, so `rlmed report --recompute` can redo every number from them; every metric is compared with the baseline
by a paired bootstrap (methods.md §10), and eval rows found in other stages' data are reported as contamination.
The stage writes results.json and report.md; how the parts fit: docs/architecture.md, "Evaluation".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rlmed.eval.benchmarks import BENCHMARK_FORMATS
from rlmed.stages.base import Input, StageContext, StageSpec

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Args:
    baseline: str | None = None
    """The model the others are compared with (its name: the stage id of `$id.model`, else the folder name);
    default the first model."""
    max_new_tokens: int = 128
    """Longest answer, in tokens (>= 1); a longer one is cut there and scored as it is."""
    temperature: float = 0.0
    """0: greedy decoding."""
    samples_per_prompt: int = 1
    """Generation sets (prompts with the doctor's reply): answers per row. 1: one answer, decoded with
    `temperature`. k > 1: k answers sampled at `sample_temperature`, and the row's text metrics and reward are
    their means, so a row measures the model's expected answer (what RL optimises) rather than one decision that
    a tiny change of the weights can flip, and the intervals still resample prompts. Choice and hit-rate rows
    are answered once, with `temperature`."""
    sample_temperature: float = 1.0
    """The sampling temperature of the k answers of `samples_per_prompt`."""
    top_p: float = 1.0
    """Nucleus cut-off (0..1] when sampling (temperature > 0); 1 keeps the whole distribution."""
    model_generation_config: bool = False
    """Let each model's own generation_config.json (repetition_penalty, top_k, no_repeat_ngram_size, ...) fill
    every generation setting not given here; default: plain greedy (or temperature/top_p) decoding whatever the
    file says. results.json records each model's settings under `generation`."""
    batch_size: int = 8
    """Prompts per generation (or log-likelihood) batch (>= 1): a memory and speed setting."""
    max_rows: int | None = None
    """Rows used per eval set (the first N); None: all."""
    few_shot: int = 0
    """Solved examples put before each multiple-choice question: the first rows of the set's `few_shot_from`
    file, else the set's own first rows (which are then not scored)."""
    few_shot_from: dict[str, str] = field(default_factory=dict)
    """Eval set name -> a file of solved examples in the set's own layout (a benchmark's dev split: CMMLU's
    dev/<subject>.csv, CMB-val); relative paths from the current directory."""
    choice_template: Literal["plain", "meds_ins"] = "plain"
    """Few-shot layout for plain multiple-choice rows: plain (questions with their answers), or MedS-Ins' case
    template. A benchmark set always uses its benchmark's own layout."""
    choice_scoring: Literal["generate", "loglik"] = "generate"
    """Multiple choice: generate (the model answers, the letter is read from its text), or loglik (each option's
    `choice_continuation` is scored by the model's log-probability after the question and the most probable
    wins, as lm-eval-harness does: for small or base models, whose knowledge shows before their answer format)."""
    choice_continuation: str = "{option}"
    """loglik: what the model would write for an option, a format string over the row's fields plus {option}
    and {letter} (e.g. "{condition}的常见表现是{option}。" when the rows have a condition field)."""
    judge: dict[str, Any] | None = None
    """An LLM judge component ({_component_: reward.judge.LLMJudge, ...}) for pairwise win/tie/loss."""
    contamination_threshold: float = 0.8
    """Share (0, 1] of an eval row's character 5-grams found in one training row that reports it as contaminated
    (rlmed.eval.contamination); 0.8 tolerates light rewording, 1.0 reports only rows copied whole."""
    dtype: str = "auto"
    """Weights dtype when loading each model: auto (float32 on CPU), float32, bfloat16, float16."""
    seed: int = 42
    """Sampling seed (used when temperature > 0), and the seed of the paired-bootstrap draws."""
    breakdown_by: list[str] = field(default_factory=lambda: ["condition"])
    """Eval-row fields (e.g. condition, red_flag) to break every metric down by; saved rows carry them as tags."""
    targets: dict[str, str] = field(default_factory=dict)
    """Stage id -> the metric that stage is judged on in "What each stage did" (a results key such as
    "dialogues/reward.rules.referral"); stages not named get a default by kind (rlmed.eval.stage_effects)."""

    def __post_init__(self) -> None:
        if self.samples_per_prompt < 1 or (self.samples_per_prompt > 1 and self.sample_temperature <= 0):
            raise ValueError(f"samples_per_prompt must be at least 1, and k > 1 samples need sample_temperature > 0, "
                             f"got samples_per_prompt={self.samples_per_prompt}, "
                             f"sample_temperature={self.sample_temperature}")
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.few_shot < 0:
            raise ValueError(f"max_new_tokens and batch_size must be at least 1, few_shot at least 0, got "
                             f"max_new_tokens={self.max_new_tokens}, batch_size={self.batch_size}, "
                             f"few_shot={self.few_shot}")
        if not 0.0 < self.contamination_threshold <= 1.0:
            raise ValueError(f"contamination_threshold must be within (0, 1], got {self.contamination_threshold}")
        if self.choice_template == "meds_ins" and self.few_shot < 1:
            raise ValueError(f"choice_template meds_ins needs few_shot >= 1 (its cases are the solved examples), "
                             f"got few_shot={self.few_shot}")
        if not all(isinstance(f, str) and f for f in self.breakdown_by):
            raise ValueError(f"breakdown_by must list eval-row field names, got {self.breakdown_by!r}")
        if not all(isinstance(v, str) and v.strip() for v in self.few_shot_from.values()):
            raise ValueError(f"few_shot_from must map eval set names to example files, got {self.few_shot_from!r}")
        bad = {k: v for k, v in self.targets.items() if not isinstance(v, str) or "/" not in v.strip("/")}
        if bad:
            raise ValueError(f"targets must map stage ids to metric keys '<eval set>/<metric>' as in results.json "
                             f"(e.g. dialogues/reward_mean), got {bad}")


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
    continuations: list[str] | None = None
    """loglik choice scoring: the answer text of every option (rlmed.eval.loglik)."""
    tags: dict[str, Any] = field(default_factory=dict)
    """The row's breakdown_by fields (rlmed.eval.generations.row_tags); HealthBench's example_tags too."""
    multiple: bool = False
    """A multiple-answer choice row: `answer` holds every correct letter, and only the exact set scores."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """What the reward source reads besides the answer (HealthBench: rubrics, prompt_id)."""

    @property
    def text(self) -> str:
        """What the contamination check looks for in training data: the question (last user turn)."""
        return self.messages[-1]["content"]


def check_targets(targets: dict[str, str], models: dict[str, str], set_names: list[str]) -> None:
    """ValueError unless every args.targets entry names a stage whose model is evaluated and an eval set of this
    stage: caught before generating, rather than a silently unmeasured line in the report."""
    stages = {Path(p).parent.name for p in models.values() if Path(p).name in ("model", "merged")}
    for stage_id, key in targets.items():
        if stage_id not in stages:
            raise ValueError(f"args.targets names stage '{stage_id}', whose model is not evaluated here (stages "
                             f"with evaluated models: {', '.join(sorted(stages)) or 'none'})")
        if key.split("/", 1)[0] not in set_names:
            raise ValueError(f"args.targets['{stage_id}'] = '{key}': '{key.split('/', 1)[0]}' is not an eval set of "
                             f"this stage ({', '.join(set_names)}); keys are '<eval set>/<metric>'")


def set_kind(rows: list[dict[str, Any]]) -> str:
    if rows and all("options" in r and "answer" in r for r in rows):
        return "choice"
    if rows and all("items" in r for r in rows):
        return "hitrate"
    return "generation"


def benchmark_records(source: Any, limit: int | None = None) -> tuple[list[Any], str | None]:
    """A source's rows, and the benchmark its container says it is (a CMMLU CSV, a MedS-Bench task file: files
    rlmed.data.records does not read); the other sources through rlmed.data.sources, Hub errors included, only
    the first `limit` rows read when given."""
    from rlmed.data.columns import rename_rows
    from rlmed.data.sources import source_records
    from rlmed.eval.benchmarks import read_benchmark_file

    found = read_benchmark_file(source.path) if source.is_local else None
    if found is None:
        return source_records(source, limit), None
    records, fmt = found
    return list(rename_rows(records, source.columns)), fmt


def load_eval_set(source: Any, args: Args, name: str = "") -> tuple[str, list[EvalRow], str | None]:
    """One eval set's kind, rows (few-shot examples already folded into the choice prompts) and benchmark format
    (None: rlmed's own row shapes). The format is the source's `format:` when it names a benchmark, else the one
    its file or first row's columns show (rlmed.eval.benchmarks.detect_benchmark) unless `format:` names a row
    format."""
    from rlmed.eval.benchmarks import CHOICE_FORMATS, detect_benchmark
    from rlmed.eval.generations import row_tags

    # Every row gives at least one eval row, so max_rows (and the set's own few-shot examples) bound the rows
    # to read: a cap over a large benchmark file reads only its head.
    limit = None if args.max_rows is None else args.max_rows + (0 if name in args.few_shot_from else args.few_shot)
    records, hint = benchmark_records(source, limit)
    fmt = source.format if source.format in BENCHMARK_FORMATS else None
    if source.format is None:
        fmt = hint or (detect_benchmark(records[0].row) if records else None)
    if fmt in CHOICE_FORMATS:
        rows = _benchmark_choice_rows(source, fmt, records, args, name)
        kind = "choice"
    elif fmt is not None:
        from rlmed.eval.benchmarks import cmb_clin_rows, healthbench_row

        kind = "generation"
        rows = []
        for r in records:
            for c in (cmb_clin_rows(r) if fmt == "cmb_clin" else [healthbench_row(r)]):
                rows.append(EvalRow(c.messages, reference=c.reference, metadata=c.metadata,
                                    tags={**row_tags(r.row, args.breakdown_by), **c.tags}))
    else:
        kind, rows = _plain_rows(source, records, args, name)
    return kind, rows[: args.max_rows] if args.max_rows is not None else rows, fmt


def _few_shot_records(source: Any, args: Args, name: str, records: list[Any]) -> tuple[list[Any], list[Any]]:
    """(solved examples, rows to score): the first few_shot rows of `few_shot_from[name]`, else of the set."""
    if name not in args.few_shot_from or not args.few_shot:
        return records[: args.few_shot], records[args.few_shot:]
    import dataclasses

    path = Path(args.few_shot_from[name]).expanduser()
    if not path.exists():
        raise ValueError(f"args.few_shot_from['{name}']: no such file {path} (relative paths are read from the "
                         f"current directory)")
    shots, _ = benchmark_records(dataclasses.replace(source, path=str(path.resolve()), is_local=True, weight=None))
    if len(shots) < args.few_shot:
        raise ValueError(f"args.few_shot is {args.few_shot}, but {path} has {len(shots)} example rows")
    return shots[: args.few_shot], records


def _benchmark_choice_rows(source: Any, fmt: str, records: list[Any], args: Args, name: str) -> list[EvalRow]:
    from rlmed.data.records import DataError
    from rlmed.eval.benchmarks import choice_item, choice_messages
    from rlmed.eval.generations import row_tags

    shot_records, scored = _few_shot_records(source, args, name, records)
    shots = [choice_item(r, fmt) for r in shot_records]
    rows = []
    for r in scored:
        item = choice_item(r, fmt)
        answers = None
        if args.choice_scoring == "loglik":
            if item.multiple:
                raise DataError(r.path, r.line, "a multiple-answer question cannot be scored by log-likelihood "
                                                "(it picks one option); use choice_scoring: generate")
            answers = _continuations(r, item.as_row(), item.options, args)
        rows.append(EvalRow(choice_messages(fmt, item, shots), options=item.options, answer=item.answer,
                            continuations=answers, multiple=item.multiple,
                            tags=row_tags({**r.row, **item.fields}, args.breakdown_by)))
    return rows


def _continuations(record: Any, row: dict[str, Any], options: list[str], args: Args) -> list[str]:
    from rlmed.data.records import DataError
    from rlmed.eval.loglik import ContinuationError, continuations

    try:
        return continuations(args.choice_continuation, row, options)
    except ContinuationError as exc:
        raise DataError(record.path, record.line, f"{exc}; fix args.choice_continuation") from None


def _plain_rows(source: Any, records: list[Any], args: Args, name: str) -> tuple[str, list[EvalRow]]:
    """rlmed's own row shapes: choice rows {question, options, answer}, hit-rate rows, doctor prompts."""
    from rlmed.data.dialogues import as_doctor_prompts
    from rlmed.eval.choice import few_shot_prompt, meds_ins_prompt, zero_shot_prompt
    from rlmed.eval.generations import row_tags

    kind = set_kind([r.row for r in records])
    rows: list[EvalRow] = []
    if kind == "choice":
        shot_records, scored = _few_shot_records(source, args, name, records)
        shots = [{"question": r.row["question"], "options": r.row["options"], "answer": r.row["answer"]}
                 for r in shot_records]

        def prompt_of(row: dict[str, Any]) -> str:
            if args.choice_template == "meds_ins":
                cases = [(zero_shot_prompt(e["question"], e["options"]), e["answer"]) for e in shots]
                return meds_ins_prompt(MEDS_INS_INSTRUCTION, zero_shot_prompt(row["question"], row["options"]), cases)
            if shots:
                return few_shot_prompt(row["question"], row["options"], shots)
            return zero_shot_prompt(row["question"], row["options"])

        for r in scored:
            answers = None
            if args.choice_scoring == "loglik":
                answers = _continuations(r, r.row, list(r.row["options"]), args)
            rows.append(EvalRow([{"role": "user", "content": prompt_of(r.row)}], options=list(r.row["options"]),
                                answer=str(r.row["answer"]).strip(), continuations=answers,
                                tags=row_tags(r.row, args.breakdown_by)))
    elif kind == "hitrate":
        rows = [EvalRow([{"role": "user", "content": r.row["question"]}], items=list(r.row["items"]),
                        tags=row_tags(r.row, args.breakdown_by)) for r in records]
    else:
        rows = [EvalRow(p.messages, reference=p.reference, tags=row_tags(r.row, args.breakdown_by))
                for r in records for p in as_doctor_prompts(r, source.format)]
    return kind, rows


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


def saved_rows(mine: list[tuple[str, int, str, EvalRow]], texts: list[list[str]]) -> list[dict[str, Any]]:
    """This rank's answers (one or more per row) as generations rows, each with what its metric is computed
    from."""
    from rlmed.eval.generations import saved_row

    return [saved_row(s, i, kind, row.messages, answers[0], reference=row.reference, options=row.options,
                      answer_key=row.answer, items=row.items, tags=row.tags, samples=answers,
                      multiple=row.multiple, metadata=row.metadata)
            for (s, i, kind, row), answers in zip(mine, texts)]


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
        atomic_write_jsonl(out_dir / f"{name}.rank{dist.rank()}.jsonl", shard, private=True)
        dist.barrier()
        if not dist.is_main():
            return []
        shard = [r for k in range(world) for r in read_jsonl(out_dir / f"{name}.rank{k}.jsonl")]
    order = {s: n for n, s in enumerate(set_order)}
    merged = sorted(shard, key=lambda r: (order[r["set"]], r["index"]))
    atomic_write_jsonl(out_dir / f"{name}.jsonl", merged, private=True)
    return merged


def generate_sharded(ctx: StageContext, name: str, path: str, sets: dict[str, tuple[str, list[EvalRow]]],
                     settings: Any, source: Any = None, used: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every rank answers its share (rows rank::world of every set) and, given a reward source, scores that
    share itself (its own judge-cache shard: rlmed.rl.sources). The merged rows are saved before scoring, so a
    failing source costs no generation, and again with the scores. Returns the merged rows on the main rank,
    [] on the others; `used` receives the generation settings (rlmed.generation.generate_hf)."""
    from rlmed import dist
    from rlmed.eval.generations import add_reward_scores
    from rlmed.generation import generate_hf

    rank, world = dist.rank(), dist.world_size()
    mine = [(s, i, kind, row) for s, (kind, rows) in sets.items() for i, row in enumerate(rows)][rank::world]
    scored = [n for n, (*_, row) in enumerate(mine) if row.continuations is not None]  # loglik choice rows
    texts: list[list[str]] = [[""] for _ in mine]
    k = getattr(settings, "samples_per_prompt_generation", 1)
    sampled = [n for n, (_, _, kind, _) in enumerate(mine) if kind == "generation"] if k > 1 else []
    generated = sorted(set(range(len(mine))) - set(scored) - set(sampled))
    for n, answers in zip(generated, generate_hf(path, [mine[n][3].messages for n in generated], settings,
                                                  seed=ctx.seed, used=used)):
        texts[n] = answers
    if sampled:
        from types import SimpleNamespace

        several = SimpleNamespace(**{**vars(settings), "samples_per_prompt": k,
                                     "temperature": settings.sample_temperature})
        used_sampling: dict[str, Any] = {}
        for n, answers in zip(sampled, generate_hf(path, [mine[n][3].messages for n in sampled], several,
                                                   seed=ctx.seed, used=used_sampling)):
            texts[n] = answers
        if used is not None:
            used["generation_sets"] = {"samples_per_prompt": k, **used_sampling}
    if scored:
        from rlmed.eval.loglik import score_continuations

        options = [mine[n][3].continuations for n in scored]
        for n, row_scores in zip(scored, score_continuations(path, [mine[n][3].messages for n in scored], options,
                                                             settings.batch_size, settings.dtype)):
            best = max(range(len(row_scores)), key=row_scores.__getitem__)
            # Saved as the model's answer, labelled with its letter, so --recompute reads the same choice.
            texts[n] = [f"{'ABCDEFGHIJKLMNOPQRSTUVWXYZ'[best]}. {mine[n][3].continuations[best]}"]
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
    from rlmed.eval.generations import answers_by_set, model_values, summarise_model
    from rlmed.eval.pairwise import PairRow, compare_models_sync
    from rlmed.eval.report import render_report, tables
    from rlmed.eval.statistics import add_statistics, settings as statistics_settings
    from rlmed.rl.sources import build_reward_source

    models = {model_name(p): p for p in inputs["models"]}
    if len(models) != len(inputs["models"]):
        raise ValueError(f"two models share a name ({', '.join(models)}); evaluate each folder once")
    baseline = args.baseline or next(iter(models))
    if baseline not in models:
        raise ValueError(f"args.baseline '{baseline}' is not one of the models: {', '.join(models)}")
    names = [Path(str(s.path)).stem for s in inputs["data"]]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise ValueError(f"eval sets are named by their file names, and {', '.join(clashes)} names two or more "
                         f"files; rename one (results, generations and the report key every number by set name)")
    unknown = sorted(set(args.few_shot_from) - set(names))
    if unknown:
        raise ValueError(f"args.few_shot_from names {', '.join(unknown)}, which is not an eval set of this stage "
                         f"({', '.join(names)})")
    loaded = {name: load_eval_set(s, args, name) for name, s in zip(names, inputs["data"])}
    sets = {name: (kind, rows) for name, (kind, rows, _) in loaded.items()}
    formats = {name: fmt for name, (_, _, fmt) in loaded.items() if fmt is not None}
    check_targets(args.targets, models, list(sets))
    settings = SimpleNamespace(samples_per_prompt=1, temperature=args.temperature, top_p=args.top_p,
                               batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, dtype=args.dtype,
                               model_generation_config=args.model_generation_config,
                               samples_per_prompt_generation=args.samples_per_prompt,
                               sample_temperature=args.sample_temperature)
    generation_sets = [s for s, (kind, _) in sets.items() if kind == "generation"]
    # Built on every rank: each scores its own rows, a judge appending to its own cache shard (the rank).
    source = (build_reward_source(ctx.reward, ctx.run_dir, ctx.stage_dir)
              if ctx.reward is not None and generation_sets else None)
    if source is None and "healthbench" in formats.values():
        logger.warning("evaluate: HealthBench sets are answered but not graded: the stage has no reward: block (a "
                       "rubric judge, e.g. reward.rubric.RubricJudge with clip: false)")
    if source is not None and getattr(source, "clip", False) is True and "healthbench" in formats.values():
        # A clipped per-example score hides how far below 0 an answer's mistakes took it; HealthBench clips only
        # the mean. Warned, not refused: a clipped score is still a score.
        logger.warning("evaluate: the reward source clips each example's score to 0..1; HealthBench averages the "
                       "unclipped scores and clips the mean (give the rubric judge clip: false)")

    used: dict[str, dict[str, Any]] = {name: {} for name in models}  # generation settings, filled per model
    saved = {name: generate_sharded(ctx, name, path, sets, settings, source, used[name])
             for name, path in models.items()}
    if not dist.is_main():
        return {}  # the main rank computes the metrics, judges and reports

    kinds = {s: kind for s, (kind, _) in sets.items()}
    # Per-row values once per model: the metrics are their means, the bootstrap resamples them.
    values = {name: model_values(rows, kinds) for name, rows in saved.items()}
    summaries = {name: summarise_model(v) for name, v in values.items()}
    metrics = {name: m for name, (m, _) in summaries.items()}
    answers = {name: answers_by_set(rows) for name, rows in saved.items()}
    results: dict[str, Any] = {
        "baseline": baseline,
        "models": {name: {"path": path, "stage": Path(path).parent.name} for name, path in models.items()},
        "eval_sets": {s: {"rows": len(rows), "kind": kind,
                          **({"format": formats[s]} if s in formats else {}),
                          **({"multiple_answer_rows": sum(r.multiple for r in rows)}
                             if any(r.multiple for r in rows) else {}),
                          **({"scoring": args.choice_scoring} if kind == "choice" else {}),
                          **({"continuation": args.choice_continuation}
                             if kind == "choice" and args.choice_scoring == "loglik" else {}),
                          **({"samples_per_prompt": args.samples_per_prompt}
                             if kind == "generation" and args.samples_per_prompt > 1 else {})}
                      for s, (kind, rows) in sets.items()},
        "metrics": metrics,
    }
    results["generation"] = used  # what each model was decoded with (rlmed.sampling), from the main rank's shard
    if source is not None:
        results["reward"] = {name: r for name, (_, r) in summaries.items()}
    if args.judge is not None and generation_sets:
        judge = build_reward_source(args.judge, ctx.run_dir, ctx.stage_dir)
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
    results["statistics"] = statistics_settings(ctx.seed, args.breakdown_by, args.targets)
    results = add_statistics(results, values, ctx.run_dir, ctx.stage_id)
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
        "data": Input("data", many=True, formats=BENCHMARK_FORMATS,
                      doc="eval sets, one per file: dialogues with references, choice, hit-rate, or a benchmark's "
                          "own layout (format: cmb_exam, cmexam, medqa, cmmlu, meds_bench, healthbench, cmb_clin)"),
    },
    outputs={"results": "results.json", "report": "report.md"},
    run=run,
    reward="optional",
    doc=__doc__,
)
