"""What rlmed costs over the libraries it wraps: `python -m bench.overhead` (about 15 minutes on 2 CPU cores).

The same tiny-model training runs twice per task, once as an rlmed recipe stage (`python -m rlmed.cli run
recipe.yaml`, what a user runs) and once as a plain trl script written the way trl's documentation shows
(`python -m bench.overhead --child trl ...`: load the model and tokenizer, a `datasets` dataset from the same jsonl,
trl's trainer, `train()`, `save_model()`). Tasks: SFT (trl's SFTTrainer), DPO (DPOTrainer) and reward-model
training (RewardTrainer), all with identical settings: the tiny.yaml model shape, batch 8, max_length 256,
`--steps` optimizer steps, logging every step, no checkpoints, no evaluation, no packing, a plain random batch
order (set on both sides; length-grouped batches are a speed-up of their own, measured by bench.data), float32
on CPU (bf16 on CUDA), seed 42, and the same rows (doctor dialogues from data/sample; DPO/RM pairs: the doctor's reply chosen,
another prompt's reply rejected).

What differs is what each side does with the rows, which is the overhead being measured: rlmed validates the
recipe, reads rows with line-located errors, renders and tokenises dialogues itself (with an assistant mask, so
its SFT loss is on the assistant's tokens; the plain script's trl tokenisation trains on every token, the same
compute), writes metrics.jsonl every step and a manifest, and saves a model folder with its tokenizer.

The two runs of a task alternate in ≥ 5 pairs (`--pairs`; the order flips every pair, so neither side always
runs on a warmer page cache), each in a fresh process launched the same way, so that nothing is shared:

- start-up: from just before the process is launched to the start of its first optimizer step (a trainer
  callback, `StepClock`, notes the times; both sides run the same one: rlmed through the recipe's
  `callbacks:` block). It covers interpreter start, imports, reading and tokenising the data, loading the model.
- steps/s: 1 / the median step time after 2 warm-up steps (a step: from the end of the previous one to its own
  end, so data loading and logging count). The median, because on a small shared machine single steps of the
  same batch vary by ±40% (other load, page cache); the mean over the window is recorded too (mean_steps_per_s).
- peak RSS: the child's whole-life peak resident set (os.wait4's ru_maxrss), model saving included, and the
  peak at the end of training. Both children run with glibc's mmap threshold fixed at 1 MiB
  (MALLOC_MMAP_THRESHOLD_): with glibc's default, which raises the threshold as large blocks are freed at a
  moment that depends on thread timing, runs of the same plain trl script peaked anywhere from 964 to 1181 MiB;
  with it fixed, within 861-885 MiB. `--glibc-default-malloc` measures with the default.

Each figure's ratio is rlmed / trl of the medians over pairs (targets: steps/s ≥ 0.95×, peak RSS ≤ 1.05×,
start-up ≤ 1.2×), and the median of per-pair ratios as a cross-check less sensitive to drifting machine load.
Writes bench/results/overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.presets import ROOT, SAMPLE

TASKS = ("sft", "dpo", "rm")
SIDES = ("rlmed", "trl")
WARMUP_STEPS = 2
TARGETS = {"steps_per_s": (">=", 0.95), "peak_rss_mib": ("<=", 1.05), "startup_s": ("<=", 1.2)}
STAGE_KIND = {"sft": "sft", "dpo": "dpo", "rm": "reward_model"}
# What the trl config class is per task, and the learning rate both sides use (the stages' own defaults).
TRL_CONFIG = {"sft": "SFTConfig", "dpo": "DPOConfig", "rm": "RewardConfig"}
LEARNING_RATE = {"sft": 2e-5, "dpo": 5e-7, "rm": 1e-5}
SEED = 42


class StepClock:
    """A transformers TrainerCallback (built lazily, so importing this module stays cheap for the child) that
    writes the wall-clock time of the first step's start and of every step's end to `path` when training ends."""

    def __new__(cls, path: str):
        from transformers import TrainerCallback

        class _Clock(TrainerCallback):
            def __init__(self) -> None:
                self.first_begin: float | None = None
                self.ends: list[float] = []

            def on_step_begin(self, args, state, control, **kwargs):
                if self.first_begin is None:
                    self.first_begin = time.time()

            def on_step_end(self, args, state, control, **kwargs):
                self.ends.append(time.time())

            def on_train_end(self, args, state, control, **kwargs):
                import resource

                Path(path).write_text(json.dumps({
                    "first_step_begin": self.first_begin, "step_ends": self.ends,
                    "train_end_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))

        return _Clock()


# --- the shared inputs -----------------------------------------------------------------------------------------
def write_inputs(work: Path) -> dict[str, Path]:
    """The tiny model folder, and SFT dialogues and preference pairs for each side, written once.

    rlmed reads its files through its mixing step, which shuffles the rows (seeded); the trl side gets the rows
    in that same order, so both datasets are identical and the Trainer's seeded sampler forms the same batches on
    both sides (otherwise batches of different lengths, and so different padding, would make up the difference).
    """
    from bench.mole import build_model_dir
    from rlmed.artifacts import atomic_write_jsonl, read_jsonl
    from rlmed.data.sources import dialogue, load_sources, pair
    from rlmed.stages.base import DataSource

    rows = read_jsonl(SAMPLE / "doctor_dialogues.jsonl")
    dialogues = [{"messages": r["messages"] + [{"role": "assistant", "content": r["reference"]}]} for r in rows]
    shuffled = list(rows)
    random.Random(0).shuffle(shuffled)
    pairs = [{"prompt": r["messages"], "chosen": [{"role": "assistant", "content": r["reference"]}],
              "rejected": [{"role": "assistant", "content": other["reference"]}]}
             for r, other in zip(rows, shuffled) if other["reference"] != r["reference"]]
    paths = {"model": build_model_dir("tiny", work / "model")}
    for name, items in (("sft", dialogues), ("pairs", pairs)):
        paths[name] = work / f"{name}.jsonl"
        atomic_write_jsonl(paths[name], items)
    in_rlmed_order = {
        "sft": [{"messages": d} for d in load_sources([DataSource(str(paths["sft"]))], dialogue, seed=SEED).items],
        "pairs": [{"prompt": p.prompt, "chosen": [{"role": "assistant", "content": p.chosen}],
                   "rejected": [{"role": "assistant", "content": p.rejected}]}
                  for p in load_sources([DataSource(str(paths["pairs"]))], pair, seed=SEED).items],
    }
    for name, items in in_rlmed_order.items():
        paths[f"trl_{name}"] = work / f"trl_{name}.jsonl"
        atomic_write_jsonl(paths[f"trl_{name}"], items)
    return paths


def settings(task: str, steps: int, batch: int, max_length: int) -> dict:
    """The trainer fields both sides set, identically."""
    fields = {"max_steps": steps, "per_device_train_batch_size": batch, "learning_rate": LEARNING_RATE[task],
              "logging_steps": 1, "save_strategy": "no", "eval_strategy": "no", "report_to": "none", "seed": SEED,
              "dataloader_num_workers": 0, "max_length": max_length,
              # The same (plain random) batch order on both sides, whatever either library's default.
              "train_sampling_strategy": "random"}
    if task == "sft":
        fields.update(packing=False, padding_free=False)
    return fields


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def rlmed_command(task: str, paths: dict[str, Path], run_dir: Path, clock: Path, fields: dict) -> list[str]:
    import yaml

    data_key = "data" if task == "sft" else "pairs"
    data_path = paths["sft"] if task == "sft" else paths["pairs"]
    stage = {"id": task, "kind": STAGE_KIND[task],
             "inputs": {"model": str(paths["model"]), data_key: str(data_path)},
             "args": {"validation_fraction": 0.0},
             "trainer": {k: v for k, v in fields.items() if k not in ("report_to",)} | {"bf16": cuda()},
             "callbacks": [{"_component_": "bench.overhead.StepClock", "path": str(clock)}]}
    recipe = run_dir.with_suffix(".yaml")
    recipe.write_text(yaml.safe_dump({"name": f"overhead-{task}", "run_dir": str(run_dir), "stages": [stage]},
                                     allow_unicode=True), encoding="utf-8")
    return [sys.executable, "-m", "rlmed.cli", "run", str(recipe)]


def trl_command(task: str, paths: dict[str, Path], run_dir: Path, clock: Path, fields: dict) -> list[str]:
    spec = {"task": task, "model": str(paths["model"]), "data": str(paths["trl_sft" if task == "sft" else "trl_pairs"]),
            "out": str(run_dir), "clock": str(clock), "fields": fields}
    spec_path = run_dir.with_suffix(".json")
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    return [sys.executable, "-m", "bench.overhead", "--child", str(spec_path)]


# --- the plain trl script ----------------------------------------------------------------------------------------
def trl_child(spec_path: Path) -> None:
    """What a trl user writes for the task: no rlmed import anywhere on this path."""
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    import trl

    spec = json.loads(spec_path.read_text())
    task, fields = spec["task"], dict(spec["fields"])
    use_cuda = torch.cuda.is_available()
    config = getattr(trl, TRL_CONFIG[task])(output_dir=spec["out"], bf16=use_cuda, dataloader_pin_memory=use_cuda,
                                            **fields)
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    dataset = load_dataset("json", data_files=spec["data"], split="train")
    dtype = torch.bfloat16 if use_cuda else torch.float32
    clock = StepClock(spec["clock"])
    if task == "rm":
        # trl's implicit-prompt preference rows: whole dialogues for chosen and rejected.
        dataset = dataset.map(lambda r: {"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]},
                              remove_columns=["prompt"])
        model = AutoModelForSequenceClassification.from_pretrained(spec["model"], num_labels=1, dtype=dtype)
        model.config.pad_token_id = tokenizer.pad_token_id
        trainer = trl.RewardTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                                    callbacks=[clock])
    else:
        model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=dtype)
        trainer_cls = trl.SFTTrainer if task == "sft" else trl.DPOTrainer
        trainer = trainer_cls(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                              callbacks=[clock])
    trainer.train()
    trainer.save_model(str(Path(spec["out"]) / "model"))
    tokenizer.save_pretrained(str(Path(spec["out"]) / "model"))


# --- the parent ------------------------------------------------------------------------------------------------
# glibc moves its mmap threshold up as large blocks are freed, at a moment that depends on thread timing; runs
# of the same script then peak ~150-250 MiB apart. A fixed threshold (1 MiB) takes that noise out of the RSS
# figure on both sides alike (--glibc-default-malloc leaves glibc's default).
FIXED_MMAP_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}


def run_one(command: list[str], clock: Path, log: Path, malloc_env: dict | None = None) -> dict:
    """Launch one child, wait for it; its start-up time, steps/s and whole-life peak RSS."""
    env = dict(os.environ, WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
               **(FIXED_MMAP_THRESHOLD if malloc_env is None else malloc_env))
    launched = time.time()
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0 or not clock.is_file():
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(command)} failed (exit {process.returncode}); log {log}:\n{tail}")
    times = json.loads(clock.read_text())
    ends = times["step_ends"]
    if len(ends) <= WARMUP_STEPS + 1:
        raise RuntimeError(f"only {len(ends)} steps ran; give --steps above {WARMUP_STEPS + 1}")
    # Step k's time is end(k) - end(k-1) (the data loading between steps counts, as it does for a user).
    durations = [b - a for a, b in zip(ends[WARMUP_STEPS - 1:], ends[WARMUP_STEPS:])]
    return {"startup_s": times["first_step_begin"] - launched,
            "steps_per_s": 1.0 / statistics.median(durations),
            "mean_steps_per_s": len(durations) / (ends[-1] - ends[WARMUP_STEPS - 1]),
            "peak_rss_mib": usage.ru_maxrss / 1024, "train_peak_rss_mib": times["train_end_rss_mib"],
            "steps": len(ends), "wall_s": time.time() - launched}


def ratio_summary(runs: dict[str, list[dict]]) -> dict:
    """Medians per side, rlmed/trl of the medians, the median of per-pair ratios, and the verdict per target."""
    out = {}
    for key, (direction, target) in TARGETS.items():
        medians = {side: statistics.median(r[key] for r in runs[side]) for side in SIDES}
        ratio = medians["rlmed"] / medians["trl"]
        pair_ratio = statistics.median(a[key] / b[key] for a, b in zip(runs["rlmed"], runs["trl"]))
        met = ratio >= target if direction == ">=" else ratio <= target
        out[key] = {"rlmed": medians["rlmed"], "trl": medians["trl"], "ratio": ratio,
                    "median_pair_ratio": pair_ratio, "target": f"{direction} {target}", "met": met}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5, help="alternated rlmed/trl pairs per task (default 5)")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run (default 30)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of sft,dpo,rm")
    parser.add_argument("--glibc-default-malloc", action="store_true",
                        help="leave glibc's dynamic mmap threshold on (the RSS figure then varies by ~20%% per run)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "overhead.json")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        trl_child(args.child)
        return 0
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or args.pairs < 1 or args.steps <= WARMUP_STEPS + 1:
        parser.error(f"tasks must be among {', '.join(TASKS)} (got {unknown}); --pairs >= 1; "
                     f"--steps > {WARMUP_STEPS + 1}")

    results: dict = {"machine": {"platform": platform.platform(), "python": platform.python_version(),
                                 "cpus": os.cpu_count(), "cuda": cuda()},
                     "settings": {"pairs": args.pairs, "steps": args.steps, "batch": args.batch,
                                  "max_length": args.max_length, "warmup_steps": WARMUP_STEPS},
                     "load_before": os.getloadavg()[0], "tasks": {}}
    malloc_env = {} if args.glibc_default_malloc else FIXED_MMAP_THRESHOLD
    results["settings"]["malloc_env"] = malloc_env
    with tempfile.TemporaryDirectory(prefix="rlmed-overhead-") as tmp:
        work = Path(tmp)
        paths = write_inputs(work)
        for task in tasks:
            fields = settings(task, args.steps, args.batch, args.max_length)
            runs: dict[str, list[dict]] = {side: [] for side in SIDES}
            for pair in range(args.pairs):
                order = SIDES if pair % 2 == 0 else SIDES[::-1]
                for side in order:
                    run_dir = work / f"{task}-{side}-{pair}"
                    clock = work / f"{task}-{side}-{pair}.clock.json"
                    build = rlmed_command if side == "rlmed" else trl_command
                    figures = run_one(build(task, paths, run_dir, clock, fields), clock,
                                      work / f"{task}-{side}-{pair}.log", malloc_env=malloc_env)
                    runs[side].append(figures)
                    print(f"{task} pair {pair + 1}/{args.pairs} {side:5s}: start-up {figures['startup_s']:.2f} s, "
                          f"{figures['steps_per_s']:.2f} steps/s, peak RSS {figures['peak_rss_mib']:.0f} MiB",
                          flush=True)
            summary = ratio_summary(runs)
            results["tasks"][task] = {"runs": runs, "summary": summary}
            for key, s in summary.items():
                verdict = "met" if s["met"] else "NOT met"
                print(f"{task} {key}: rlmed {s['rlmed']:.3f}, trl {s['trl']:.3f}, ratio {s['ratio']:.3f}× "
                      f"(per-pair median {s['median_pair_ratio']:.3f}×; target {s['target']}: {verdict})",
                      flush=True)
    results["load_after"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"1-min load {results['load_before']:.2f} before, {results['load_after']:.2f} after; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
