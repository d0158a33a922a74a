"""`rlmed review RUN_DIR` (serve the review page) and `rlmed review export RUN_DIR` (write training rows).

Exit codes: 0 done (the server stopped with Ctrl+C), 1 the server could not start (e.g. the port is taken),
2 a wrong command line, a run with nothing to review, or no review to export.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import socket
import sys
from pathlib import Path

from rlmed.review.tasks import TaskError, assign, build_tasks, read_annotators

logger = logging.getLogger("rlmed.review")

DEFAULT_PORT = 8765
# Fixed when the review starts: changing them later would move labelled tasks or their sides.
FIXED_SETTINGS = ("seed", "overlap", "reference", "max_tasks")


def serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlmed review", description="Doctors label pairs of answers from a run in a local web page, blind. "
        "`rlmed review export RUN_DIR` writes the labels as training rows.")
    parser.add_argument("run_dir", type=Path, help="the run folder, e.g. runs/tiny")
    parser.add_argument("--annotators", metavar="NAMES|FILE",
                        help="alice,bob or a file with one name a line; needed at the first start only")
    parser.add_argument("--overlap", type=float, default=0.0,
                        help="share of tasks given to two annotators, for inter-annotator agreement (default 0)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only); name another to expose "
                             "the page to your network deliberately")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sides shown and the assignment (default 0)")
    parser.add_argument("--reference", choices=["shown", "hidden"], default="shown",
                        help="show the real doctor's reply with each prompt that has one (default shown)")
    parser.add_argument("--max-tasks", type=int, default=None, help="review a seeded sample of this many tasks")
    parser.add_argument("--rubric", type=Path, default=None,
                        help="rubric whose criteria the optional scores use (default: the judge's HuatuoGPT one)")
    parser.add_argument("--new-tokens", metavar="NAMES|all",
                        help="issue new links for these annotators (their old links stop working)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlmed review export",
                                     description="write the doctors' labels as pairs, KTO rows and SFT rows")
    parser.add_argument("run_dir", type=Path, help="the run folder the review was started on")
    parser.add_argument("--out", type=Path, default=None, help="folder to write (default RUN_DIR/review/export)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: list[str]) -> int:
    from rlmed.cli import setup_logging

    if argv[:1] == ["export"]:
        args = export_parser().parse_args(argv[1:])
        setup_logging(args.verbose)
        return export_command(args)
    args = serve_parser().parse_args(argv)
    setup_logging(args.verbose)
    return serve_command(args)


def _problem(text: str) -> int:
    print(f"rlmed review: {text}", file=sys.stderr)
    return 2


def url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return socket.gethostname()
    return f"[{host}]" if ":" in host else host


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve_command(args: argparse.Namespace) -> int:
    from rlmed.review.server import rubric_criteria, serve
    from rlmed.review.store import ReviewStore, db_path

    if not args.run_dir.is_dir():
        return _problem(f"{args.run_dir}: no such run folder")
    try:
        criteria = rubric_criteria(args.rubric)
    except (OSError, ValueError) as exc:
        return _problem(f"--rubric: {exc}")
    store = ReviewStore(db_path(args.run_dir))
    try:
        tokens = _start(store, args)
    except TaskError as exc:
        store.close()
        return _problem(str(exc))
    base = f"http://{url_host(args.host)}:{args.port}/"
    print(f"rlmed review: {db_path(args.run_dir)}; one link per annotator (keep them private):", flush=True)
    for name in store.annotators():
        if name in tokens:
            print(f"  {name}: {base}?token={tokens[name]}", flush=True)
        else:
            print(f"  {name}: the link issued before still works (--new-tokens {name} issues a new one)", flush=True)
    if not is_loopback(args.host):
        logger.warning("listening on %s: anyone on the network who holds a link can label, over plain HTTP "
                       "(patient text unencrypted); use it only on a network you trust", args.host)
    print(f"serving on {base} (Ctrl+C stops; labels are saved as they are given)", flush=True)
    try:
        serve(store, args.host, args.port, criteria)
    except SystemExit as exc:  # uvicorn exits when it cannot bind
        return 1 if exc.code else 0
    finally:
        store.close()
    return 0


def _start(store, args: argparse.Namespace) -> dict[str, str]:
    """First start: tasks, assignment and new tokens. Later: the stored review as it was; new tokens if asked."""
    wanted = {"seed": args.seed, "overlap": args.overlap, "reference": args.reference, "max_tasks": args.max_tasks}
    if not store.initialised():
        if not args.annotators:
            raise TaskError("the first start needs --annotators alice,bob (or a file with one name a line)")
        names = read_annotators(args.annotators)
        tasks, summary = build_tasks(args.run_dir, seed=args.seed, show_reference=args.reference == "shown",
                                     max_tasks=args.max_tasks)
        if not tasks:
            raise TaskError(f"{args.run_dir} has nothing to review: no completed evaluate stage with generations of "
                            f"two or more models, and no completed ai_feedback stage with candidates ({summary})")
        queues = assign([t.id for t in tasks], names, args.overlap, args.seed)
        tokens = store.setup(tasks, queues, wanted)
        counts = {s: sum(t.source == s for t in tasks) for s in {t.source for t in tasks}}
        logger.info("review started: %d tasks (%s), %d annotators, %d tasks given to two", len(tasks),
                    ", ".join(f"{n} {s}" for s, n in sorted(counts.items())), len(names),
                    round(args.overlap * len(tasks)))
        for stage, found in summary.items():
            logger.info("  %s: %s", stage, found)
        return tokens
    stored = store.settings()
    known = store.annotators()
    if args.annotators and sorted(read_annotators(args.annotators)) != known:
        raise TaskError(f"this review was started for {', '.join(known)}; its tasks are dealt to them. Start a "
                        f"new review (move {store.path.parent} away) to change annotators")
    defaults = serve_parser()
    # Warn only about flags the user gave: the defaults of a later start say nothing.
    changed = [k for k in FIXED_SETTINGS if k in stored and stored[k] != wanted[k] != defaults.get_default(k)]
    if changed:
        logger.warning("ignoring %s: fixed when this review started (%s)", ", ".join(f"--{k.replace('_', '-')}"
                       for k in changed), ", ".join(f"{k}={stored[k]}" for k in changed))
    if args.new_tokens:
        names = known if args.new_tokens == "all" else [n.strip() for n in args.new_tokens.split(",") if n.strip()]
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise TaskError(f"--new-tokens: no annotator {unknown} in this review ({', '.join(known)})")
        return store.reissue(names)
    return {}


def export_command(args: argparse.Namespace) -> int:
    from rlmed.review.export import ExportError, export

    try:
        counts = export(args.run_dir, args.out)
    except ExportError as exc:
        return _problem(str(exc))
    folder = Path(counts["folder"])
    print(f"{counts['labels']} labels on {counts['labelled_tasks']} of {counts['tasks']} tasks; written to {folder}:")
    print(f"  pairs.jsonl        {counts['pairs']} pairs (reward_model, dpo); left out where two doctors "
          f"disagree: {counts['conflicts']} tasks")
    print(f"  kto.jsonl          {counts['kto_desirable']} desirable, {counts['kto_undesirable']} undesirable answers")
    print(f"  sft.jsonl          {counts['sft']} corrected answers")
    print(f"  judge_check.jsonl  {counts['judge_check']} labels for `rlmed judge-check`")
    print("  labels.jsonl, doctors.json (the report's Doctors section)")
    return 0

