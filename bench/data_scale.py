"""SFT data preparation at scale: rlmed's Arrow path (prepared once, reused by other ranks) against trl's own
`datasets` path, for time and peak memory: `python -m bench.data --scale` (or `python -m bench.data_scale`).

For each `--sizes` (default 200000,1000000 dialogues) the dialogues of bench.data (`make_dialogues`: 1-3 turns,
gamma-distributed lengths of mean `--mean-chars` characters, sentences of data/sample) are written to a jsonl
file in a temporary folder, in seeded chunks of 20000, streamed (the chunk with index i is make_dialogues(20000,
seed * 1000003 + i): the first rows of a larger size are those of a smaller one). Generation is not measured.
Tokenizer: the tiny preset's (bench/presets.py), or `--model-dir`'s.

Each path then runs in a fresh Python process of its own, so its peak memory is its alone:

1. **rlmed, first preparation**: an empty cache; what the sft stage does: `DataCache.for_run(run_dir)`,
   `load_sources([DataSource(path=jsonl)], dialogue, seed, cache=cache)`, the `--validation-fraction` split
   (items[:n_eval] for validation, items[n_eval:] for training) and `ready_sets` of both with the cache and an
   SFTConfig of `--max-length`, no packing: the cached tokenisation also truncates to max_length and the rows left
   with no trained token are dropped, as SFTTrainer's preparation would, so the trainer skips its own pass.
2. **rlmed, second preparation** (what another rank does): the same in another fresh process on the same cache.
   The cache's events.jsonl must say that every entry this process used was "reused" (recorded, and a FAIL line
   if not). Its time is given as a ratio to the first preparation's.
3. **trl**: `datasets.load_dataset("json", data_files=jsonl, split="train", cache_dir=<temp>)`, then
   SFTTrainer's own preparation (`SFTTrainer._prepare_dataset` on a stand-in, as bench.data does: trl's
   per-row chat template + tokenisation, labels, truncation to `--max-length`, packing off) with
   `dataset_num_proc` = the number of worker processes.

With `--trainer-prep` (the default) "rlmed + trainer" is the like-for-like figure against trl's path, which ends
at the same point: the sets SFTTrainer trains on. Since the sft stage skips SFTTrainer's preparation (above), it
equals the rlmed phase; where the stage could not skip it (a config with packing) it would add SFTTrainer's
preparation of the tokenised sets, timed apart. Each phase ends by reading its result batch-wise (`Dataset.iter`
in Arrow format: rows and the lengths of `input_ids`, so any lazy select or filter is paid; the pages this read
maps are let go after each batch, in both paths), inside its time. After the measured phases each process sums
every token id of its final datasets: a cross-check that, after the trainer's truncation, both paths hold the
same rows and tokens (the order differs: rlmed's mixing shuffles).

Worker processes: `--num-proc`, given to rlmed as RLMED_DATA_NUM_PROC and to trl as `dataset_num_proc`; without
it rlmed picks its own (rlmed.data.prepared.default_num_proc: the CPUs, at most one per 5000 rows, so the
validation split of a small size is tokenised in the process itself) and trl gets what rlmed picks for the whole
file. The figures record what each map used.

Figures per process, for the preparation alone (after the imports and the tokenizer load, which are timed
apart, until the result has been read):

- wall seconds and rows/s (all dialogues, train + validation, over that time); tokens/s.
- peak RSS, from the kernel: `getrusage(RUSAGE_SELF).ru_maxrss` of the process, and `RUSAGE_CHILDREN`, the
  largest peak of any one of its finished child processes (not a sum over them), both read at the end of the
  phase (and at its start). Workers are forked, so a worker's RSS counts the pages it shares with its parent:
  "self + children" counts those twice, and with several workers at once it counts only one. The children's
  figure has a floor of about 120 MiB from the imports (trio runs `ldconfig -p` through a fork of the
  interpreter, whose peak is counted), which is why a process without workers shows it too.
- the whole process tree, sampled every 0.1 s by this process from /proc (Linux): the peak of the summed RSS of
  the process and its workers, and of their summed PSS (a page shared by k processes counts 1/k in each: the
  memory the tree really holds), with PSS's anonymous part. The rest of RSS is file-backed: pages of the Arrow
  files the processes have memory-mapped and read (the kernel drops them under pressure, but RSS counts them
  while they stay mapped), so RSS grows with what a process has read, and anonymous memory is the part that
  the dataset's size must not move. A sampled peak can miss a spike shorter than 0.1 s.

Targets (the issue's, on the first, smallest size; PASS/FAIL lines, never an exception): peak RSS of rlmed's first
preparation <= 1.5 GB (1.5e9 bytes), counted as self + children ru_maxrss (the process and its largest worker),
with the sampled tree PSS peak and its anonymous part checked beside it; rows/s rlmed / trl >= 1.0 (load +
tokenise against trl's whole preparation, and like for like with the trainer's preparation added); second
preparation <= 10% of the first's time, and every entry it used "reused"; growth of each peak-memory figure from
the smallest to the largest size <= 20%. A note says when the load average exceeded the CPUs during a run.

Writes bench/results/data_scale.json (`--out`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.presets import ROOT

CHUNK = 20000  # dialogues generated per seeded make_dialogues call
RSS_LIMIT = 1.5e9  # bytes: the issue's 1.5 GB
RATE_TARGET = 1.0
REUSE_LIMIT = 0.10
GROWTH_LIMIT = 0.20
SAMPLE_INTERVAL = 0.1
MiB = 1 << 20


# --- the dialogues ----------------------------------------------------------------------------------------------

def write_dialogues(path: Path, n: int, seed: int, mean_chars: int) -> dict[str, int]:
    """n dialogues of bench.data's make_dialogues as `{"messages": [...]}` rows of a jsonl file, CHUNK at a
    time (chunk i seeded with seed * 1000003 + i); the row count and the file's size in bytes."""
    from bench.data import make_dialogues

    with path.open("w", encoding="utf-8") as f:
        for i, start in enumerate(range(0, n, CHUNK)):
            chunk = make_dialogues(min(CHUNK, n - start), seed * 1000003 + i, mean_chars)
            f.write("".join(json.dumps({"messages": d}, ensure_ascii=False) + "\n" for d in chunk))
    return {"rows": n, "bytes": path.stat().st_size}


# --- what runs in the measured process --------------------------------------------------------------------------

def _maxrss(who: int) -> int:
    """ru_maxrss in bytes (Linux gives KiB, macOS bytes)."""
    value = resource.getrusage(who).ru_maxrss
    return value if sys.platform == "darwin" else value * 1024


def _mark() -> dict[str, float]:
    return {"time": time.time(), "clock": time.perf_counter(), "maxrss_self": _maxrss(resource.RUSAGE_SELF),
            "maxrss_children": _maxrss(resource.RUSAGE_CHILDREN), **_resident_now()}


def _resident_now() -> dict[str, int]:
    """This process's resident memory now by kind (Linux): anonymous, file-backed (mapped files, the Arrow
    cache's among them) and shared memory, in bytes; to tell which kind a peak grew in."""
    fields = {"RssAnon:": "rss_anon_now", "RssFile:": "rss_file_now", "RssShmem:": "rss_shmem_now"}
    found: dict[str, int] = {}
    try:
        with open("/proc/self/status", encoding="utf-8") as status:
            for line in status:
                parts = line.split()
                if parts and parts[0] in fields:
                    found[fields[parts[0]]] = int(parts[1]) * 1024
    except OSError:
        pass
    return found


def read_through(datasets: list[Any]) -> dict[str, int]:
    """Rows and tokens (`input_ids` lengths) of the datasets, read batch-wise with `Dataset.iter` in Arrow form:
    through any indices mapping (a select, a filter), so lazy work is paid here, while a plain memory-mapped
    file's token values are not paged in (the lengths come from the list offsets). The pages it reads are let go
after each batch, in either path (rlmed.data.mapped_pages): each batch's offsets map a block of pages into RSS,
130 bytes or more per row, which measure this check, not the preparation."""
    import pyarrow.compute as pc

    from rlmed.data.mapped_pages import release_dataset_pages

    rows = tokens = 0
    for dataset in datasets:
        for batch in dataset.with_format("arrow").iter(batch_size=10000):
            column = batch.column("input_ids")
            rows += len(column)
            tokens += pc.sum(pc.list_value_length(column)).as_py() or 0
            release_dataset_pages(dataset)  # this check's own reads are not the preparation's memory
    return {"rows": rows, "tokens": tokens}


def id_sum(datasets: list[Any]) -> int:
    """The sum of every token id of `input_ids`: a cross-check between the paths, computed after the measured
    phases (it pages the token values in)."""
    import pyarrow.compute as pc

    return sum(pc.sum(pc.list_flatten(batch.column("input_ids"))).as_py() or 0
               for dataset in datasets for batch in dataset.select_columns(["input_ids"]).with_format("arrow")
               .iter(batch_size=10000))


def _trainer_prep(tokenizer: Any, datasets: list[Any], max_length: int, num_proc: int | None) -> list[Any]:
    from bench.data import prepare, sft_config

    config = sft_config(max_length, packing=False)
    config.dataset_num_proc = num_proc
    return [prepare(tokenizer, d, config, name) for d, name in zip(datasets, ("train", "eval"))]


def _rlmed(spec: dict, tokenizer: Any, marks: dict[str, dict]) -> dict[str, Any]:
    from bench.data import sft_config
    from rlmed.data.prepared import DataCache
    from rlmed.data.sources import DataSource, dialogue, load_sources
    from rlmed.stages.sft import ready_sets

    # As the sft stage (rlmed.stages.sft.run) does it: the cached tokenisation also does SFTTrainer's truncation
    # (max_length, no packing), so the sets it returns are the ones the trainer trains on, unprepared again.
    cache = DataCache.for_run(Path(spec["run_dir"]))
    loaded = load_sources([DataSource(path=spec["jsonl"])], dialogue, seed=spec["seed"], cache=cache)
    mixed = loaded.items
    n_eval = int(len(mixed) * spec["validation_fraction"])
    train_rows, eval_rows = mixed[n_eval:], mixed[:n_eval]
    config = sft_config(spec["max_length"], packing=False)
    train_set, eval_set, dropped = ready_sets(tokenizer, train_rows, eval_rows, cache, config)
    prepared = [d for d in (train_set, eval_set) if d is not None]
    out: dict[str, Any] = {"train_rows": len(train_rows), "eval_rows": len(eval_rows), "dropped": dropped,
                           "trainer_skips_preparation": bool((config.dataset_kwargs or {}).get("skip_prepare_dataset")),
                           "read": read_through(prepared)}
    marks["prepared"] = _mark()
    if spec["trainer_prep"]:
        if out["trainer_skips_preparation"]:
            out["trainer_read"] = dict(out["read"])  # what SFTTrainer trains on: these sets, as they are
        else:
            prepared = _trainer_prep(tokenizer, prepared, spec["max_length"], spec["trainer_num_proc"])
            out["trainer_read"] = read_through(prepared)
        marks["trainer_prepared"] = _mark()
        out["trainer_read"]["id_sum"] = id_sum(prepared)
    pid = os.getpid()
    events = [e for e in cache.events() if e.get("pid") == pid]
    out["events"] = [{"entry": e["entry"], "action": e["action"]} for e in events]
    num_proc = {}
    for e in events:
        record = cache.root / e["entry"] / "record.json"
        if e["entry"].startswith("tokens-") and record.exists():
            num_proc[e["entry"]] = json.loads(record.read_text(encoding="utf-8")).get("num_proc")
    out["num_proc_by_entry"] = num_proc
    return out


def _trl(spec: dict, tokenizer: Any, marks: dict[str, dict]) -> dict[str, Any]:
    from datasets import load_dataset

    dataset = load_dataset("json", data_files=spec["jsonl"], split="train", cache_dir=spec["hf_cache"])
    trained = _trainer_prep(tokenizer, [dataset], spec["max_length"], spec["trainer_num_proc"])
    out = {"read": read_through(trained), "num_proc": spec["trainer_num_proc"]}
    marks["prepared"] = _mark()
    out["read"]["id_sum"] = id_sum(trained)
    return out


def child(spec_path: str, result_path: str) -> None:
    """One measured process: `spec_path`'s path on its jsonl; the figures go to `result_path`."""
    started = _mark()
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    import datasets
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from trl import SFTConfig, SFTTrainer  # noqa: F401  (both paths' processes: the sft stage has them loaded)

    from bench.data import prepare  # noqa: F401
    from rlmed.data import prepared, sources, tokenized  # noqa: F401

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    marks = {"started": started, "ready": _mark()}
    out = (_rlmed if spec["path"] == "rlmed" else _trl)(spec, tokenizer, marks)
    out.update(pid=os.getpid(), marks=marks)
    Path(result_path).write_text(json.dumps(out), encoding="utf-8")


# --- sampling the process tree ----------------------------------------------------------------------------------

def _proc_fields(path: str, names: tuple[str, ...]) -> dict[str, int]:
    found = {}
    with open(path, encoding="ascii", errors="replace") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in names:
                found[key] = int(rest.split()[0]) * 1024  # kB
    return found


def _descendants(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += parents.get(pid, [])
    return tree


class TreeSampler(threading.Thread):
    """Samples the summed RSS and PSS (and their anonymous parts) of a process and its descendants."""

    def __init__(self, pid: int, interval: float = SAMPLE_INTERVAL):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int, int, int, int, int]] = []  # time, procs, rss, rss anon, pss, pss anon
        self.stopped = threading.Event()
        self.available = os.path.exists("/proc/self/smaps_rollup")

    def sample(self) -> None:
        procs = rss = anon = pss = pss_anon = 0
        for pid in _descendants(self.pid):
            try:
                status = _proc_fields(f"/proc/{pid}/status", ("VmRSS", "RssAnon"))
                rollup = _proc_fields(f"/proc/{pid}/smaps_rollup", ("Pss", "Pss_Anon"))
            except (OSError, ValueError):
                continue  # gone meanwhile
            procs += 1
            rss += status.get("VmRSS", 0)
            anon += status.get("RssAnon", 0)
            pss += rollup.get("Pss", 0)
            pss_anon += rollup.get("Pss_Anon", 0)
        if procs:
            self.samples.append((time.time(), procs, rss, anon, pss, pss_anon))

    def run(self) -> None:
        while self.available and not self.stopped.wait(self.interval):
            self.sample()

    def peaks(self, start: float, end: float) -> dict[str, int] | None:
        inside = [s for s in self.samples if start <= s[0] <= end]
        if not inside:
            return None
        keys = ("processes", "rss", "rss_anon", "pss", "pss_anon")
        return {f"tree_peak_{k}": max(s[i + 1] for s in inside) for i, k in enumerate(keys)}


def measure(spec: dict, work: Path, label: str) -> dict[str, Any]:
    """Runs `child` on `spec` in a fresh interpreter and gathers its figures, per phase."""
    spec_path, result_path, log_path = (work / f"{label}.{x}" for x in ("spec.json", "result.json", "log"))
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    env = dict(os.environ)
    env.pop("RLMED_DATA_CACHE", None)  # the cache is the run folder's, as in a run without it
    if spec["num_proc"] is not None:
        env["RLMED_DATA_NUM_PROC"] = str(spec["num_proc"])
    code = "import sys; from bench.data_scale import child; child(sys.argv[1], sys.argv[2])"
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    start = time.perf_counter()
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", code, str(spec_path), str(result_path)], cwd=ROOT,
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        rc = proc.wait()
        sampler.stopped.set()
        sampler.join()
    process_s = time.perf_counter() - start
    if rc != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"{label} ({spec['path']}) exited with {rc}:\n{tail}")
    out = json.loads(result_path.read_text(encoding="utf-8"))
    marks = out.pop("marks")
    rows = out["read"]["rows"] if spec["path"] == "trl" else out["train_rows"] + out["eval_rows"]

    def phase(begin: dict, end: dict) -> dict[str, Any]:
        seconds = end["clock"] - begin["clock"]
        fig: dict[str, Any] = {"seconds": seconds, "rows_per_s": rows / seconds if seconds else 0.0,
                               "maxrss_self": end["maxrss_self"], "maxrss_children": end["maxrss_children"],
                               "maxrss_self_plus_children": end["maxrss_self"] + end["maxrss_children"],
                               **{k: v for k, v in end.items() if k.endswith("_now")}}
        fig.update(sampler.peaks(begin["time"], end["time"]) or {})
        return fig

    ready = marks["ready"]
    out["startup"] = {"seconds": ready["clock"] - marks["started"]["clock"], "maxrss_self": ready["maxrss_self"],
                      "maxrss_children": ready["maxrss_children"]}
    out["prepare"] = phase(marks["ready"], marks["prepared"])
    out["prepare"]["tokens_per_s"] = out["read"]["tokens"] / out["prepare"]["seconds"]
    if "trainer_prepared" in marks:
        out["trainer_prep"] = phase(marks["prepared"], marks["trainer_prepared"])
        out["with_trainer_prep"] = phase(marks["ready"], marks["trainer_prepared"])
    out["process_seconds"] = process_s
    out["rows"] = rows
    out["samples"] = len(sampler.samples)
    out["load_average_1min"] = [load_before, os.getloadavg()[0] if hasattr(os, "getloadavg") else None]
    return out


# --- main -------------------------------------------------------------------------------------------------------

def _check(name: str, value: float | None, limit: float, op: str, shown: Callable[[float], str]) -> dict[str, Any]:
    ok = None if value is None else (value <= limit if op == "<=" else value >= limit)
    return {"name": name, "value": value, "target": f"{op} {shown(limit)}", "pass": ok,
            "shown": "n/a" if value is None else shown(value)}


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / MiB:.0f} MiB"


def _growth(first: float | None, last: float | None) -> float | None:
    return None if not first or last is None else last / first - 1


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.data --scale",
                                 description="SFT data preparation at scale: rlmed's Arrow path vs trl's datasets "
                                             "path, time and peak memory, each in a fresh process")
    ap.add_argument("--sizes", default="200000,1000000", help="dialogue counts, comma-separated")
    ap.add_argument("--num-proc", type=int, default=None,
                    help="worker processes of both paths (default: rlmed's own choice; trl gets the same)")
    ap.add_argument("--mean-chars", type=int, default=450, help="mean dialogue length in characters")
    ap.add_argument("--max-length", type=int, default=1024, help="SFTTrainer's max_length (truncation)")
    ap.add_argument("--validation-fraction", type=float, default=0.05, help="the sft stage's default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trainer-prep", action=argparse.BooleanOptionalAction, default=True,
                    help="also time SFTTrainer's preparation of rlmed's tokenised sets (like for like with trl's)")
    ap.add_argument("--model-dir", type=Path, default=None, help="tokenizer folder; default: the tiny preset")
    ap.add_argument("--tmp-dir", type=Path, default=None,
                    help="where the dialogues and caches go (about 2.8 GB per 100k dialogues of the default length, "
                         "all three paths' files; one size at a time); default: the system's")
    ap.add_argument("--trl-up-to", type=int, default=None,
                    help="run trl's path only for sizes up to this (its rows/s target is at the smallest size; at "
                         "1M it takes about an hour on 2 cores); default: every size")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "data_scale.json")
    args = ap.parse_args(argv)
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    if not sizes or sizes[0] <= 0:
        ap.error("--sizes needs positive dialogue counts")
    if args.trl_up_to is not None and args.trl_up_to < sizes[0]:
        ap.error(f"--trl-up-to {args.trl_up_to} leaves out the smallest size ({sizes[0]}), where rows/s is compared")

    import datasets
    import tokenizers
    import transformers
    import trl

    from rlmed.data.prepared import default_num_proc

    tmp = tempfile.TemporaryDirectory(dir=args.tmp_dir, prefix="rlmed-data-scale-")
    root = Path(tmp.name)
    model_dir = args.model_dir
    if model_dir is None:
        from bench.mole import build_model_dir

        model_dir = build_model_dir("tiny", root / "model")
    results: dict[str, Any] = {}
    try:
        for n in sizes:
            work = root / str(n)
            work.mkdir()
            jsonl = work / "dialogues.jsonl"
            print(f"{n} dialogues: writing {jsonl.name} ...", flush=True)
            written = write_dialogues(jsonl, n, args.seed, args.mean_chars)
            trl_proc = args.num_proc if args.num_proc is not None else default_num_proc(n)
            base = {"jsonl": str(jsonl), "model_dir": str(model_dir), "seed": args.seed,
                    "validation_fraction": args.validation_fraction, "max_length": args.max_length,
                    "trainer_prep": args.trainer_prep, "num_proc": args.num_proc, "trainer_num_proc": trl_proc,
                    "run_dir": str(work / "run")}
            runs = {}
            paths = [("rlmed_first", {**base, "path": "rlmed"}), ("rlmed_second", {**base, "path": "rlmed"})]
            if args.trl_up_to is None or n <= args.trl_up_to:
                paths.append(("trl", {**base, "path": "trl", "hf_cache": str(work / "hf_cache")}))
            for label, spec in paths:
                print(f"  {label} ...", flush=True)
                runs[label] = measure(spec, work, label)
            disk = sum(f.stat().st_size for f in work.rglob("*") if f.is_file())
            shutil.rmtree(work, ignore_errors=True)  # a size's files go before the next size's are written
            first, second, other = runs["rlmed_first"], runs["rlmed_second"], runs.get("trl")
            reused = bool(second["events"]) and all(e["action"] == "reused" for e in second["events"])
            figures = {
                "jsonl_bytes": written["bytes"], "disk_bytes": disk, "tokens": first["read"]["tokens"],
                "runs": runs, "second_all_reused": reused,
                "first_built": sorted({e["action"] for e in first["events"]}),
                "reuse_time_ratio": second["prepare"]["seconds"] / first["prepare"]["seconds"],
            }
            if other is not None:
                figures["rows_per_s_ratio_rlmed_over_trl"] = (first["prepare"]["rows_per_s"]
                                                              / other["prepare"]["rows_per_s"])
            if args.trainer_prep and other is not None:
                figures["rows_per_s_ratio_rlmed_with_trainer_prep_over_trl"] = (
                    first["with_trainer_prep"]["rows_per_s"] / other["prepare"]["rows_per_s"])
                figures["reuse_time_ratio_with_trainer_prep"] = (
                    second["with_trainer_prep"]["seconds"] / first["with_trainer_prep"]["seconds"])
                figures["same_tokens_as_trl"] = first["trainer_read"] == other["read"]
            results[str(n)] = figures
    finally:
        tmp.cleanup()

    small, large = results[str(sizes[0])], results[str(sizes[-1])]
    p_small, p_large = small["runs"]["rlmed_first"]["prepare"], large["runs"]["rlmed_first"]["prepare"]
    ratio = "{:.2f}x".format
    checks = [
        _check(f"peak RSS, rlmed first preparation, {sizes[0]} (self + largest worker, ru_maxrss)",
               p_small["maxrss_self_plus_children"], RSS_LIMIT, "<=", _mib),
        _check(f"peak RSS, rlmed first preparation, {sizes[0]} (whole tree, sampled PSS)",
               p_small.get("tree_peak_pss"), RSS_LIMIT, "<=", _mib),
        _check(f"peak anonymous memory, rlmed first preparation, {sizes[0]} (whole tree, sampled PSS)",
               p_small.get("tree_peak_pss_anon"), RSS_LIMIT, "<=", _mib),
        _check(f"rows/s rlmed (load + tokenise) / trl, {sizes[0]}",
               small["rows_per_s_ratio_rlmed_over_trl"], RATE_TARGET, ">=", ratio),
    ]
    if args.trainer_prep:
        checks.append(_check(f"rows/s rlmed + SFTTrainer's preparation / trl (like for like), {sizes[0]}",
                             small["rows_per_s_ratio_rlmed_with_trainer_prep_over_trl"], RATE_TARGET, ">=", ratio))
    checks += [
        _check(f"second preparation time / first, {sizes[0]}", small["reuse_time_ratio"], REUSE_LIMIT, "<=",
               "{:.1%}".format),
        {"name": "second preparation reused every entry (events.jsonl), every size",
         "value": all(r["second_all_reused"] for r in results.values()), "target": "all reused",
         "pass": all(r["second_all_reused"] for r in results.values()),
         "shown": str(all(r["second_all_reused"] for r in results.values()))},
    ]
    if len(sizes) > 1:
        checks += [
            _check(f"peak RSS growth {sizes[0]} -> {sizes[-1]} (self + largest worker, ru_maxrss)",
                   _growth(p_small["maxrss_self_plus_children"], p_large["maxrss_self_plus_children"]),
                   GROWTH_LIMIT, "<=", "{:+.1%}".format),
            _check(f"peak RSS growth {sizes[0]} -> {sizes[-1]} (whole tree, sampled PSS)",
                   _growth(p_small.get("tree_peak_pss"), p_large.get("tree_peak_pss")), GROWTH_LIMIT, "<=",
                   "{:+.1%}".format),
            _check(f"peak anonymous memory growth {sizes[0]} -> {sizes[-1]} (whole tree, sampled PSS)",
                   _growth(p_small.get("tree_peak_pss_anon"), p_large.get("tree_peak_pss_anon")), GROWTH_LIMIT,
                   "<=", "{:+.1%}".format),
        ]

    result = {
        "sizes": sizes, "mean_chars": args.mean_chars, "max_length": args.max_length,
        "validation_fraction": args.validation_fraction, "num_proc": args.num_proc, "seed": args.seed,
        "tokenizer": str(args.model_dir or "tiny preset"), "trainer_prep": args.trainer_prep,
        "trl_up_to": args.trl_up_to,
        "rss_limit_bytes": RSS_LIMIT, "results": results, "checks": checks,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                    "transformers": transformers.__version__, "trl": trl.__version__,
                    "datasets": datasets.__version__, "tokenizers": tokenizers.__version__,
                    "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "(unset)"),
                    "RLMED_DATA_NUM_PROC": os.environ.get("RLMED_DATA_NUM_PROC", "(unset)"),
                    "load_average_1min_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
    }
    _print(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"written to {args.out}")
    return result


def _print(result: dict) -> None:
    print("\nEach path in a fresh process; time and memory of the preparation (after imports and the tokenizer);"
          "\npeak RSS: ru_maxrss of the process (self) and of its largest worker (children); tree: sampled sums of"
          "\nthe process and its workers, PSS (shared pages split) with its anonymous part.")
    header = (f"{'path':<26} {'workers':>7} {'seconds':>8} {'rows/s':>8} {'self':>9} {'children':>9} "
              f"{'self+ch.':>9} {'tree RSS':>9} {'tree PSS':>9} {'PSS anon':>9}")
    for n, figures in result["results"].items():
        runs = figures["runs"]
        startup = runs["rlmed_first"]["startup"]
        print(f"\n{n} dialogues: {figures['jsonl_bytes'] / 1e6:.0f} MB jsonl, {figures['tokens'] / 1e6:.1f}M tokens "
              f"(untruncated), {figures['disk_bytes'] / 1e9:.1f} GB on disk in all; start-up (imports, tokenizer) "
              f"{startup['seconds']:.1f} s, {_mib(startup['maxrss_self'])}")
        print(header)
        rows = [("rlmed first", runs["rlmed_first"], "prepare"), ("rlmed second (reuse)", runs["rlmed_second"],
                "prepare")] + ([("trl datasets", runs["trl"], "prepare")] if "trl" in runs else [])
        if "with_trainer_prep" in runs["rlmed_first"]:
            rows[2:2] = [("rlmed first + trainer", runs["rlmed_first"], "with_trainer_prep"),
                         ("rlmed second + trainer", runs["rlmed_second"], "with_trainer_prep")]
        for name, run, key in rows:
            fig = run[key]
            workers = ",".join(str(v) for v in run["num_proc_by_entry"].values()) if "num_proc_by_entry" in run \
                else str(run["num_proc"])
            print(f"{name:<26} {workers or '-':>7} {fig['seconds']:8.1f} {fig['rows_per_s']:8.0f} "
                  f"{_mib(fig['maxrss_self']):>9} {_mib(fig['maxrss_children']):>9} "
                  f"{_mib(fig['maxrss_self_plus_children']):>9} {_mib(fig.get('tree_peak_rss')):>9} "
                  f"{_mib(fig.get('tree_peak_pss')):>9} {_mib(fig.get('tree_peak_pss_anon')):>9}")
        versus = (f"rows/s rlmed / trl {figures['rows_per_s_ratio_rlmed_over_trl']:.2f}x; "
                  if "rows_per_s_ratio_rlmed_over_trl" in figures else "trl's path not run at this size; ")
        line = (f"{versus}second / first time {figures['reuse_time_ratio']:.1%} (events all reused: "
                f"{figures['second_all_reused']})")
        if "rows_per_s_ratio_rlmed_with_trainer_prep_over_trl" in figures:
            like = figures["rows_per_s_ratio_rlmed_with_trainer_prep_over_trl"]
            reuse = figures["reuse_time_ratio_with_trainer_prep"]
            line += (f"\nwith SFTTrainer's preparation of rlmed's sets: rows/s {like:.2f}x trl's, second / first time "
                     f"{reuse:.1%}; same tokens as trl after truncation: {figures['same_tokens_as_trl']}")
        print(line)
    cpus = result["machine"]["cpus_usable"] or result["machine"]["cpus"] or 1
    loads = [x for figures in result["results"].values() for run in figures["runs"].values()
             for x in run["load_average_1min"] if x is not None]
    if loads and max(loads) > cpus:
        print(f"note: the 1-min load average reached {max(loads):.1f} on {cpus} CPUs during the runs: other processes "
              "competed for the CPU, so the times (not the memory figures) are pessimistic and noisy")
    print("\ntargets:")
    for check in result["checks"]:
        verdict = {True: "PASS", False: "FAIL", None: "n/a "}[check["pass"]]
        print(f"  {verdict}  {check['name']}: {check['shown']} (target {check['target']})")


if __name__ == "__main__":
    main()
