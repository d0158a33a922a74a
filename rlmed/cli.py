"""`rlmed run recipe.yaml` (console script) and `python rlmed/run.py recipe.yaml` (what deepspeed launches).

Exit codes: 0 done, 1 a stage failed, 2 the recipe or the command line is wrong. `rlmed judge-check`: 0 done,
1 the judge gave no verdict at all (unreachable, refusing), 2 bad labels, judge block or command line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

logger = logging.getLogger("rlmed")


def _run_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("recipe", type=Path, help="recipe YAML file, e.g. recipes/tiny.yaml")
    parser.add_argument("--only", metavar="ID", help="run only this stage (its inputs must exist already)")
    parser.add_argument("--from", dest="start_from", metavar="ID",
                        help="re-run this stage and every later one; earlier stages must have completed")
    parser.add_argument("--run-dir", type=Path, help="write the run here instead of the recipe's run_dir")
    parser.add_argument("--control", choices=["shuffled-rewards"], default=None,
                        help="run a control instead: every training reward shuffled across its samples, written "
                             "to <run_dir>-shuffled-rewards (see rlmed.control)")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate the recipe and print the stage plan; load nothing, train nothing")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help=argparse.SUPPRESS)  # passed by the deepspeed launcher
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


class _Terminal(logging.Filter):
    """What the terminal shows: rlmed's own progress, and other libraries' warnings and errors, except
    deprecation notices about calls that libraries make (the user cannot act on them). Stage logs get
    everything: their handler has no such filter."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("rlmed"):
            return True
        if record.levelno < logging.WARNING:
            return False
        return not (record.name == "py.warnings" and ("FutureWarning" in record.getMessage()
                                                     or "DeprecationWarning" in record.getMessage()))


def setup_logging(verbose: bool = False) -> None:
    """One stderr handler on the root logger, added once; handlers others installed are left alone."""
    from rlmed import dist

    logging.captureWarnings(True)  # warnings become log records: in the stage log, filtered on the terminal
    root = logging.getLogger()
    # Other ranks say only what goes wrong, unless asked: N copies of every line help nobody.
    root.setLevel(logging.DEBUG if verbose else logging.INFO if dist.is_main() else logging.WARNING)
    rank = f" [rank {dist.rank()}/{dist.world_size()}]" if dist.world_size() > 1 else ""
    if not any(getattr(h, "_rlmed", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(f"%(asctime)s{rank} %(levelname)s %(name)s: %(message)s"))
        if not verbose:
            handler.addFilter(_Terminal())
        handler._rlmed = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    # httpx2/httpx print every request URL (user-info and query included) at INFO, openai request bodies
    # (patient text) at DEBUG: none of it belongs on stderr or in a stage log, even with -v.
    for noisy in ("httpx", "httpx2", "openai", "urllib3", "filelock", "datasets", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def format_plan(plan) -> str:
    lines = []
    for planned in plan:
        stage = planned.stage
        lines.append(f"[{planned.action}] {stage.id} ({stage.kind}): {planned.reason}")
        for name, value in planned.inputs.items():
            original = stage.inputs.get(name)
            items = value if isinstance(value, list) else [value]
            originals = original if isinstance(original, list) else [original]
            for item, orig in zip(items, originals):
                path = getattr(item, "path", item)
                ref = getattr(orig, "path", orig)
                note = f"  (from {ref})" if str(ref).startswith("$") else ""
                weight = getattr(item, "weight", None)
                weight_note = f"  weight {weight:g}" if weight is not None else ""
                lines.append(f"    in  {name}: {path}{weight_note}{note}")
        for name, path in planned.outputs.items():
            lines.append(f"    out {name}: {path}")
        lines.extend(_trainer_lines(stage))
    return "\n".join(lines)


def _trainer_lines(stage) -> list[str]:
    """The trainer fields the stage will start from, each marked with where it comes from: (recipe), (stage)
    for the stage kind's declared default, unmarked for rlmed's own. Fields the stage derives from its args
    (e.g. ppo's steps from its rollouts) and machine adjustments (no CUDA: float32) are in the manifest."""
    from rlmed.stages.base import TRAINER_DEFAULTS

    fields = stage.spec.effective_trainer(stage.trainer)
    if not fields:
        return []
    marked = []
    for key, value in sorted(fields.items()):
        source = " (recipe)" if key in stage.trainer else "" if key in TRAINER_DEFAULTS and \
            key not in stage.spec.trainer_defaults else " (stage)"
        marked.append(f"{key}={_show(value)}{source}")
    lines, line = [], "    trainer:"
    for item in marked:
        if len(line) + len(item) + 2 > 116:
            lines.append(line + ",")
            line = "      "
        line += (" " if line.endswith(":") or line == "      " else ", ") + item
    return lines + [line]


def _show(value) -> str:
    from rlmed.tracking import redact

    return str(redact(value))


def quiet_deepspeed_on_cpu() -> None:
    """Without CUDA, tell DeepSpeed the accelerator is the CPU: left to detect it, it warns on every process that
    it "could not detect" a GPU, which on a CPU machine says nothing."""
    if "DS_ACCELERATOR" in os.environ:
        return
    import torch

    if not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"


def run_command(args: argparse.Namespace) -> int:
    from rlmed.recipe import RecipeError, load_recipe
    from rlmed.runner import RunError, Runner

    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    if not args.verbose:
        # datasets' per-map bars (trl's truncation passes, rlmed's cached maps) are stage detail; rlmed logs
        # what it prepares and how long it took. -v brings them back.
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    try:
        recipe = load_recipe(args.recipe, run_dir=args.run_dir, control=args.control)
    except RecipeError as exc:
        print(f"rlmed: the recipe has {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    try:
        runner = Runner(recipe, only=args.only, start_from=args.start_from)
        if args.dry_run:
            print(f"recipe {recipe.path} ({recipe.name}): {len(recipe.stages)} stages, run dir {runner.run_dir}")
            print(format_plan(runner.plan()))
            return 0
        quiet_deepspeed_on_cpu()  # here, not earlier: a dry run imports no torch
        runner.run()
    except RunError as exc:
        logger.error("%s", exc, exc_info=args.verbose)
        print(f"rlmed: {exc}", file=sys.stderr)
        return 1
    logger.info("recipe %s finished; run dir %s", recipe.name, runner.run_dir)
    return 0


def export_command(args: argparse.Namespace) -> int:
    from rlmed.models import mole

    if not (args.adapter / "mole_config.json").is_file():
        print(f"rlmed export: {args.adapter} is not a MoLE adapter folder (no mole_config.json); a full model or a "
              "LoRA adapter needs no export (LoRA: use merge: true)", file=sys.stderr)
        return 2
    try:
        mole.export(args.adapter, args.out)
    except mole.MoleLoadError as exc:
        print(f"rlmed export: {exc}", file=sys.stderr)
        return 1
    logger.info("serving folder written to %s (load: see rlmed.models.mole)", args.out)
    return 0


def report_command(args: argparse.Namespace) -> int:
    from rlmed.eval.report import ReportError, main_report

    try:
        if args.recompute:
            from rlmed.eval.recompute import recompute_run

            written = recompute_run(args.run_dir)
        else:
            written = main_report(args.run_dir)
    except ReportError as exc:
        print(f"rlmed report: {exc}", file=sys.stderr)
        return 1
    for path in written:
        if path.suffix == ".md":
            print(path)
    return 0


MAX_PROBLEMS_SHOWN = 50


def judge_check_command(args: argparse.Namespace) -> int:
    from rlmed.eval import judge_check as jc

    labels_path: Path = args.labels
    out = args.out if args.out is not None else labels_path.parent / f"{labels_path.stem}_judge_check"
    try:
        if args.recipe is not None and args.stage is None:
            raise jc.JudgeCheckError([f"{args.recipe}: --recipe needs --stage ID, the stage whose judge to check"])
        if args.judge is not None and args.stage is not None:
            raise jc.JudgeCheckError(["--stage goes with --recipe; a --judge file names its judge itself"])
        kind, labels = jc.read_labels(labels_path)
        if args.judge is not None:
            spec, where = jc.judge_from_file(args.judge), str(args.judge)
            cache_root = out  # no run to share a cache with: the check keeps its own beside its report
        else:
            spec, cache_root, where = jc.judge_from_recipe(args.recipe, args.stage, kind)
        judge = jc.build_judge(spec, cache_root, where)
        info = jc.describe_judge(judge, spec, where)
        if kind == jc.SCORES:
            jc.check_criteria(labels_path, labels, info["criteria"])
    except jc.JudgeCheckError as exc:
        print(f"rlmed judge-check: {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems[:MAX_PROBLEMS_SHOWN]:
            print(f"  {problem}", file=sys.stderr)
        if len(exc.problems) > MAX_PROBLEMS_SHOWN:
            print(f"  ... and {len(exc.problems) - MAX_PROBLEMS_SHOWN} more", file=sys.stderr)
        return 2
    report = jc.run_check(labels_path, kind, labels, judge, info, out, seed=args.seed)
    print(jc.text_table(report))
    print(f"written: {out / jc.JSON_NAME}, {out / jc.MD_NAME}")
    section = report[kind]
    if section["scored_rows"] == 0:
        print(f"rlmed judge-check: the judge gave no verdict on any of the {section['label_rows']} label rows; "
              f"first error: {jc.first_error(report)}", file=sys.stderr)
        return 1
    if section["unscored_rows"]:
        logger.warning("%d of %d label rows unscored (judge failures, left out of every number); see %s",
                       section["unscored_rows"], section["label_rows"], out / jc.MD_NAME)
    return 0


def status_command(args: argparse.Namespace) -> int:
    from rlmed.status import format_status, run_status

    target: Path = args.target
    if target.is_file():  # a recipe: its stages in order, with their kinds
        from rlmed.recipe import RecipeError, load_recipe

        try:
            recipe = load_recipe(target, run_dir=args.run_dir)
        except RecipeError as exc:
            print(f"rlmed status: the recipe has {len(exc.problems)} problem(s):", file=sys.stderr)
            for problem in exc.problems:
                print(f"  {problem}", file=sys.stderr)
            return 2
        print(format_status(recipe.run_dir, run_status(recipe.run_dir, [(s.id, s.kind) for s in recipe.stages])))
        return 0
    if not target.is_dir():
        print(f"rlmed status: {target} is neither a run folder nor a recipe file", file=sys.stderr)
        return 2
    print(format_status(target, run_status(target)))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["review"]:  # `review RUN_DIR` and `review export RUN_DIR`: its own parser (rlmed.review.cli)
        from rlmed.review.cli import main as review_main

        return review_main(argv[1:])
    parser = argparse.ArgumentParser(prog="rlmed", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("review", help="doctors label a run's answers in a local web page (`rlmed review --help`); "
                                  "`rlmed review export RUN_DIR` writes them as training rows")
    _run_parser(sub.add_parser("run", help="run a recipe's stages in order"))
    export = sub.add_parser("export", help="write a MoLE adapter as a serving folder (universal expert merged)")
    export.add_argument("adapter", type=Path, help="a mole stage's model folder, e.g. runs/tiny/experts/model")
    export.add_argument("out", type=Path, help="the folder to write (base + universal merged, experts/)")
    export.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    report = sub.add_parser("report", help="regenerate the evaluation report(s) of a finished run")
    report.add_argument("run_dir", type=Path, help="the run folder, e.g. runs/tiny")
    report.add_argument("--recompute", action="store_true",
                        help="first recompute the text/choice/hit-rate metrics in results.json from the saved "
                             "generations/*.jsonl (no generation; reward, pairwise and contamination are kept)")
    report.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    check = sub.add_parser("judge-check", help="measure an LLM judge's agreement with human labels (doctors')")
    check.add_argument("labels", type=Path,
                       help="labels .jsonl: pairwise rows {prompt, answer_a, answer_b, label: a|b|tie, reference?, "
                            "annotator?} or score rows {prompt, answer, scores: {criterion: number}, reference?}")
    which = check.add_mutually_exclusive_group(required=True)
    which.add_argument("--judge", type=Path, metavar="JUDGE.yaml",
                       help="a YAML file holding the judge's _component_ block, as a recipe's reward: takes it")
    which.add_argument("--recipe", type=Path, metavar="RECIPE", help="take the judge from this recipe's --stage")
    check.add_argument("--stage", metavar="ID", help="with --recipe: the stage whose reward: (or args.judge) to use")
    check.add_argument("--out", type=Path, metavar="DIR",
                       help="where judge_check.json and judge_check.md go (default: <labels>_judge_check/ beside "
                            "the labels file; a --judge file's cache and audit log go there too)")
    check.add_argument("--seed", type=int, default=42, help="seed of the bootstrap draws (default 42)")
    check.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    status = sub.add_parser("status", help="which stages of a run are done, running, failed or interrupted")
    status.add_argument("target", type=Path, metavar="RUN_DIR|RECIPE",
                        help="a run folder, or a recipe (its run_dir, its stages in order, unrun ones listed too)")
    status.add_argument("--run-dir", type=Path, help="with a recipe: the run folder, if not the recipe's run_dir")
    status.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    runs = sub.add_parser("runs", help="the run folders under a folder (default ./runs) and their stages' states")
    runs.add_argument("root", type=Path, nargs="?", default=Path("runs"), help="where to look (default: runs)")
    runs.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    chat = sub.add_parser("chat", help="talk to a model a run produced, with its chat template, streaming")
    chat.add_argument("model", metavar="MODEL_OR_STAGE",
                      help="a model folder (full, LoRA adapter, MoLE adapter or export) or Hub id; with --run-dir, a "
                           "stage id (its merged model when it wrote one, else its model)")
    chat.add_argument("--run-dir", type=Path, help="the run folder whose stage MODEL_OR_STAGE names, e.g. runs/tiny")
    chat.add_argument("--temperature", type=float, default=0.7, help="0: greedy (default 0.7)")
    chat.add_argument("--top-p", type=float, default=0.9, help="nucleus cut-off when sampling (default 0.9)")
    chat.add_argument("--max-new-tokens", type=int, default=512, help="longest answer in tokens (default 512)")
    chat.add_argument("--system", help="a system message to start every conversation with")
    chat.add_argument("--dtype", default="auto", help="auto (float32 on CPU), float32, bfloat16, float16")
    chat.add_argument("--seed", type=int, help="seed the sampling, for a repeatable conversation")
    chat.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if args.command == "chat":
        from rlmed.chat import chat_command

        return chat_command(args)
    if args.command == "status":
        return status_command(args)
    if args.command == "runs":
        from rlmed.status import find_runs, format_runs

        print(format_runs(find_runs(args.root)))
        return 0
    if args.command == "run":
        return run_command(args)
    if args.command == "export":
        return export_command(args)
    if args.command == "report":
        return report_command(args)
    if args.command == "judge-check":
        return judge_check_command(args)
    parser.error(f"unknown command {args.command}")
    return 2


def run_main(argv: list[str] | None = None) -> int:
    """Entry of rlmed/run.py: the same as `rlmed run`, without the subcommand word."""
    parser = _run_parser(argparse.ArgumentParser(prog="rlmed/run.py", description="run a recipe's stages in order"))
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging(args.verbose)
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
