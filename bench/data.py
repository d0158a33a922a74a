"""SFT data preparation, rlmed's path against trl's own, and the padding of the batches each yields:
`python -m bench.data` (about a minute and a half on 2 CPU cores).

Rows: `--n` (default 2000) dialogues, seeded, of 1 to 3 user/assistant turns (a quarter with a system prompt,
the rest getting the template's default one), each dialogue's length drawn from a gamma distribution (shape 2,
mean `--mean-chars` characters, default 450: about 410 tokens of the tiny tokenizer; a few run past
`--max-length`). The text is sentences of the sample data in data/sample (questions for the user turns, answer and
corpus sentences for the assistant turns). Tokenizer: the tiny preset's (bench/presets.py), trained on the sample
corpus by rlmed's tiny-model builder, with its ChatML template; `--model-dir` takes any model folder instead
(its tokenizer, and its weights for the training steps below).

The two paths start from the same Python list of dialogues and end with the dataset SFTTrainer trains on when
the recipe sets `packing: true` (trl's default `packing_strategy: bfd`, at `--max-length`):

- rlmed: `rlmed.stages.sft.tokenize_all` (what the sft and mole stages do: chat template, tokens, the mask of
  the assistant's tokens and the labels under it, as a Dataset of input_ids + assistant_masks + labels), then
  SFTTrainer's preparation of that tokenised dataset (the labels given, only `trl.data_utils.pack_dataset`).
- trl: a `messages` Dataset through SFTTrainer's preparation of conversational data (trl's tokenisation:
  `tokenizer.apply_chat_template(messages, tokenize=True)` per row in a `Dataset.map`, labels, then
  `pack_dataset`).

Both run trl's own code for everything after tokenisation: `SFTTrainer._prepare_dataset`, the method
SFTTrainer's constructor calls, called on a stand-in for the trainer (it reads only the tokenizer, the chat
template override and completion_only_loss from it), so no model is built. It is not quite like for like, and
the difference is against rlmed: rlmed's path also builds the assistant mask (the loss covers the assistant's
tokens only). trl's cannot here: the template has no `{% generation %}` markers (as Qwen2.5's has none), so
`assistant_only_loss=True` would make trl swap in a training template of its own, known only for some model
families; trl's path therefore trains on every token. The bench checks that both paths give the same input_ids.

Figures:

- rows/s of each path (rows / wall time of the whole preparation), median of `--repeats` (default 5) runs of
  each after one warm-up run of each; the runs alternate in pairs whose order flips every pair. Ratio rlmed / trl
  (the ratio of the medians; target >= 1.0x), with two cross-checks less sensitive to other load on the
  machine: the median of the per-pair ratios, and the ratio of the median CPU times (this process, all its
  threads: the fast tokenizer's batched calls may use several). rlmed's tokenize_all alone is timed too.
- padding fraction of the training batches: padding tokens / all tokens of the collated batches trl's collator
  (DataCollatorForLanguageModeling) builds from batches of `--batch-size` rows (default 8, the sft stage's
  per_device_train_batch_size) drawn in a seeded random order, as the Trainer's sampler does. Given for the
  packed rows of each path with padding-free batches (what trl does for bfd packing: one flattened row per
  batch, documents told apart by position_ids; no padding by construction, so near 0), and, so that number means
  something, for the unpacked rows (trl's preparation with packing off: truncated to max_length) in ordinary
  padded batches. Alongside: the packed rows' fill (tokens / (rows x max_length)), tokens per batch, batches per
  epoch, tokens lost to truncation, and the share of tokens the loss covers on each path.
- what the padding saving buys: `--steps` (default 3; 0 skips it) forward + backward passes of the model (the
  tiny preset, random init, sdpa attention as rlmed loads models; float32 on CPU, bf16 on CUDA) on the first
  batches of each layout, after a warm-up step of each, alternating: real and trained tokens per second, and
  the ratio packed padding-free / padded. With sdpa the flattened padding-free batch is attended as one sequence
  under a block-diagonal mask, so its attention costs (rows x max_length)^2 where the padded batch's costs
  rows x longest^2; on a small model that outweighs the padding saved.

Writes bench/results/data.json.

`python -m bench.data --scale [--sizes 200000,1000000]` measures the preparation at scale instead (rlmed's
cached Arrow path, its reuse by a second rank, and trl's `datasets` path, each in a fresh process, for time and
peak memory): see bench/data_scale.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bench.presets import ROOT, SAMPLE

TARGET = 1.0
PATHS = ("rlmed", "trl")
GAMMA_SHAPE = 2.0


# --- rows -------------------------------------------------------------------------------------------------------

def _sentences(text: str) -> list[str]:
    return [s for s in re.findall(r"[^。！？!?]*[。！？!?]", text) if len(s) > 4]


def sample_pools() -> tuple[list[str], list[str], list[str]]:
    """(questions, answer sentences, system prompts) from the sample data."""
    questions, sentences = [], []
    with (SAMPLE / "dialogues.jsonl").open(encoding="utf-8") as f:
        for line in f:
            for m in json.loads(line)["messages"]:
                if m["role"] == "user":
                    questions.append(m["content"])
                else:
                    sentences.extend(_sentences(m["content"]))
    with (SAMPLE / "corpus.jsonl").open(encoding="utf-8") as f:
        for line in f:
            sentences.extend(_sentences(json.loads(line)["text"]))
    systems = ["你是儿科医生。", "你是一名耐心的儿科医生，请用通俗的语言回答家长的问题。", "你是医院的儿科分诊助手。"]
    return sorted(set(questions)), sorted(set(sentences)), systems


def make_dialogues(n: int, seed: int = 0, mean_chars: int = 450) -> list[list[dict]]:
    """n dialogues of 1-3 turns whose total length in characters is gamma-distributed (shape 2)."""
    questions, sentences, systems = sample_pools()
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        turns = rng.randint(1, 3)
        target = max(20.0, rng.gammavariate(GAMMA_SHAPE, mean_chars / GAMMA_SHAPE))
        messages = [{"role": "system", "content": rng.choice(systems)}] if rng.random() < 0.25 else []
        asked = [rng.choice(questions) for _ in range(turns)]
        budget = max(turns * 8.0, target - sum(len(q) for q in asked)) / turns  # characters per answer
        for question in asked:
            answer = ""
            while len(answer) < budget:
                answer += rng.choice(sentences)
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        out.append(messages)
    return out


# --- the two paths ----------------------------------------------------------------------------------------------

def sft_config(max_length: int, packing: bool, batch_size: int = 8) -> Any:
    import warnings

    from trl import SFTConfig

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers' renamed-field notices
        return SFTConfig(output_dir=tmp, report_to="none", max_length=max_length, packing=packing,
                         per_device_train_batch_size=batch_size, bf16=False, use_cpu=True)


def prepare(tokenizer: Any, dataset: Any, config: Any, name: str = "train") -> Any:
    """SFTTrainer's own dataset preparation (the method its constructor calls), without building a trainer."""
    from trl import SFTTrainer

    stand_in = SimpleNamespace(_tokenizer=tokenizer, chat_template=None, completion_only_loss=False)
    return SFTTrainer._prepare_dataset(stand_in, dataset, tokenizer, config, config.packing, None, name)


def rlmed_path(tokenizer: Any, dialogues: list[list[dict]], config: Any) -> tuple[Any, float]:
    """(prepared dataset, seconds spent in rlmed's tokenisation)."""
    from rlmed.stages.sft import tokenize_all

    start = time.perf_counter()
    tokenized = tokenize_all(tokenizer, dialogues, "bench")
    tokenize_s = time.perf_counter() - start
    return prepare(tokenizer, tokenized, config), tokenize_s


def trl_path(tokenizer: Any, dialogues: list[list[dict]], config: Any) -> Any:
    from datasets import Dataset

    return prepare(tokenizer, Dataset.from_dict({"messages": dialogues}), config)


def timed(path: str, tokenizer: Any, dialogues: list[list[dict]], config: Any) -> tuple[float, float, float | None, Any]:
    """(wall seconds, CPU seconds of this process, rlmed's tokenisation seconds or None, prepared dataset)."""
    start, cpu = time.perf_counter(), time.process_time()
    if path == "rlmed":
        dataset, tokenize_s = rlmed_path(tokenizer, dialogues, config)
    else:
        dataset, tokenize_s = trl_path(tokenizer, dialogues, config), None
    return time.perf_counter() - start, time.process_time() - cpu, tokenize_s, dataset


# --- padding ----------------------------------------------------------------------------------------------------

def padding_fraction(batches: Sequence[dict], examples: Sequence[Sequence[dict]]) -> float:
    """Padding tokens / all tokens over collated batches: each batch's input_ids tensor holds len(input_ids) real
    tokens per example it was built from; every other position is padding."""
    total = sum(int(b["input_ids"].numel()) for b in batches)
    real = sum(len(e["input_ids"]) for rows in examples for e in rows)
    return (total - real) / total if total else 0.0


def collate(dataset: Any, pad_token_id: int, batch_size: int, padding_free: bool,
            seed: int, grouped: bool = False) -> tuple[list[list[dict]], list[dict]]:
    """(example groups, collated batches) of `dataset` as the Trainer feeds them: a seeded random order (or, with
    `grouped`, the Trainer's `train_sampling_strategy: group_by_length` order: transformers' LengthGroupedSampler,
    random mega-batches of 50 batches sorted by length), batches of `batch_size` rows, trl's collator (padded, or
    padding-free as trl uses it for bfd packing)."""
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    collator = DataCollatorForLanguageModeling(pad_token_id=pad_token_id, padding_free=padding_free)
    columns = ["input_ids", "labels"] + (["seq_lengths"] if "seq_lengths" in dataset.column_names else [])
    rows = dataset.select_columns(columns).to_list()
    if grouped:
        sampler = LengthGroupedSampler(batch_size, lengths=[len(r["input_ids"]) for r in rows],
                                       generator=torch.Generator().manual_seed(seed))
        order = list(sampler)
    else:
        order = list(range(len(rows)))
        random.Random(seed).shuffle(order)
    groups = [[rows[i] for i in order[k:k + batch_size]] for k in range(0, len(order), batch_size)]
    return groups, [collator(g) for g in groups]


def batch_figures(dataset: Any, pad_token_id: int, batch_size: int, padding_free: bool, seed: int,
                  grouped: bool = False) -> dict:
    groups, batches = collate(dataset, pad_token_id, batch_size, padding_free, seed, grouped)
    tokens = [int(b["input_ids"].numel()) for b in batches]
    rows = [r for g in groups for r in g]
    real = sum(len(r["input_ids"]) for r in rows)
    trained = sum(sum(t != -100 for t in r["labels"]) for r in rows)
    return {"rows": len(rows), "batches": len(batches), "padding_fraction": padding_fraction(batches, groups),
            "tokens": real, "trained_token_fraction": trained / real if real else 0.0,
            "mean_tokens_per_batch": statistics.mean(tokens), "max_tokens_per_batch": max(tokens),
            "batch_layout": "padding-free (1 flattened row)" if padding_free else
            f"padded ({batch_size} rows{', grouped by length' if grouped else ''})"}


# --- training steps ---------------------------------------------------------------------------------------------

def step_figures(model_dir: Path, layouts: dict[str, tuple[Any, bool, bool]], pad_token_id: int, batch_size: int,
                 steps: int, seed: int) -> dict:
    """Forward + backward of the model (sdpa attention, as rlmed loads it) on the first batches of each layout,
    after one warm-up step of each, alternating (the order flips every round); real and trained tokens per second
    of the timed steps."""
    import torch
    from transformers import AutoModelForCausalLM

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa",
                                                 dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
    model.to(device).train()
    # Each layout's batches in its own order (the length-grouped one's first batch holds its longest rows): the
    # steps cover a spread of batches, not only the first ones.
    batches = {name: collate(ds, pad_token_id, batch_size, pf, seed, grouped)[1]
               for name, (ds, pf, grouped) in layouts.items()}
    batches = {name: b[:: max(1, len(b) // (steps + 1))][: steps + 1] for name, b in batches.items()}

    def step(batch: dict) -> tuple[float, int, int]:
        inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
        real = int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else int(inputs["input_ids"].numel())
        trained = int((inputs["labels"][:, 1:] != -100).sum())
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(**inputs, use_cache=False).loss.backward()  # use_cache=False as trl's compute_loss sets it
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, real, trained

    names = list(layouts)
    for name in names:
        step(batches[name][0])
    totals = {name: [0.0, 0, 0] for name in names}
    for i in range(1, steps + 1):
        for name in (names if i % 2 else names[::-1]):
            if i < len(batches[name]):
                for k, v in enumerate(step(batches[name][i])):
                    totals[name][k] += v
    out = {name: {"steps": min(steps, len(batches[name]) - 1), "seconds": t,
                  "real_tokens_per_s": real / t if t else 0.0, "trained_tokens_per_s": trained / t if t else 0.0}
           for name, (t, real, trained) in totals.items()}
    out["device"] = str(device)
    out["threads"] = torch.get_num_threads()
    return out


# --- main -------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--scale" in argv:  # the at-scale benchmark, with its own options
        from bench.data_scale import main as scale_main

        return scale_main([a for a in argv if a != "--scale"])
    ap = argparse.ArgumentParser(description="SFT data preparation: rlmed's path vs trl's, rows/s and padding")
    ap.add_argument("--scale", action="store_true",
                    help="measure preparation at scale instead (bench/data_scale.py; its options: --sizes, "
                         "--num-proc, --mean-chars, --out, ...)")
    ap.add_argument("--n", type=int, default=2000, help="dialogues")
    ap.add_argument("--repeats", type=int, default=5, help="measured runs of each path (alternated)")
    ap.add_argument("--max-length", type=int, default=1024, help="trl's max_length (the packed row length)")
    ap.add_argument("--batch-size", type=int, default=8, help="rows per training batch (per_device_train_batch_size)")
    ap.add_argument("--mean-chars", type=int, default=450, help="mean dialogue length in characters")
    ap.add_argument("--steps", type=int, default=3,
                    help="timed training steps of each batch layout (0: skip the training-step figures)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model-dir", type=Path, default=None,
                    help="model folder whose tokenizer (and, for the steps, weights) are used; default: the tiny preset")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "data.json")
    args = ap.parse_args(argv)

    import datasets
    import tokenizers
    import torch
    import transformers
    import trl
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from rlmed.stages.sft import tokenize_all

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    tmp = tempfile.TemporaryDirectory()
    model_dir = args.model_dir
    if model_dir is None:
        from bench.mole import build_model_dir

        model_dir = build_model_dir("tiny", Path(tmp.name) / "model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dialogues = make_dialogues(args.n, args.seed, args.mean_chars)
    packed_config = sft_config(args.max_length, packing=True, batch_size=args.batch_size)
    print(f"{args.n} dialogues (1-3 turns, gamma-distributed lengths, mean {args.mean_chars} chars), "
          f"packing bfd at max_length {args.max_length}; warm-up, then {args.repeats} alternating pairs ...",
          flush=True)

    warm = dialogues[: min(len(dialogues), 100)]
    for path in PATHS:
        timed(path, tokenizer, warm, packed_config)
    load_before = os.getloadavg()[0]
    seconds: dict[str, list[float]] = {p: [] for p in PATHS}
    cpu_seconds: dict[str, list[float]] = {p: [] for p in PATHS}
    tokenize_s: list[float] = []
    prepared: dict[str, Any] = {}
    for i in range(args.repeats):
        for path in (PATHS if i % 2 == 0 else PATHS[::-1]):
            wall, cpu, tok, prepared[path] = timed(path, tokenizer, dialogues, packed_config)
            seconds[path].append(wall)
            cpu_seconds[path].append(cpu)
            if tok is not None:
                tokenize_s.append(tok)
    load_after = os.getloadavg()[0]

    rows_per_s = {p: [args.n / s for s in seconds[p]] for p in PATHS}
    median = {p: statistics.median(rows_per_s[p]) for p in PATHS}
    ratio = median["rlmed"] / median["trl"]
    paired = statistics.median(t / r for r, t in zip(seconds["rlmed"], seconds["trl"]))
    cpu_ratio = statistics.median(cpu_seconds["trl"]) / statistics.median(cpu_seconds["rlmed"])
    # Like for like: the same token ids on both paths.
    same_ids = sorted(map(tuple, prepared["rlmed"]["input_ids"])) == sorted(map(tuple, prepared["trl"]["input_ids"]))

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    tokenized = tokenize_all(tokenizer, dialogues, "bench")
    untruncated = sum(len(ids) for ids in tokenized["input_ids"])
    unpacked = prepare(tokenizer, tokenized, sft_config(args.max_length, packing=False))
    padding = {
        "rlmed_packed_padding_free": batch_figures(prepared["rlmed"], pad_id, args.batch_size, True, args.seed),
        "trl_packed_padding_free": batch_figures(prepared["trl"], pad_id, args.batch_size, True, args.seed),
        "rlmed_unpacked_padded": batch_figures(unpacked, pad_id, args.batch_size, False, args.seed),
        "rlmed_unpacked_length_grouped": batch_figures(unpacked, pad_id, args.batch_size, False, args.seed,
                                                       grouped=True),
    }
    for key in ("rlmed_packed_padding_free", "trl_packed_padding_free"):
        fig = padding[key]
        fig["packed_row_fill"] = fig["tokens"] / (fig["rows"] * args.max_length)
    for fig in padding.values():
        fig["tokens_lost_to_truncation_fraction"] = 1 - fig["tokens"] / untruncated

    steps = None
    if args.steps > 0:
        print(f"training steps: {args.steps} of each batch layout (sdpa attention) ...", flush=True)
        steps = step_figures(model_dir, {"packed_padding_free": (prepared["rlmed"], True, False),
                                         "unpacked_padded": (unpacked, False, False),
                                         "unpacked_length_grouped": (unpacked, False, True)},
                             pad_id, args.batch_size, args.steps, args.seed)
        steps["real_tokens_per_s_ratio_packed_over_padded"] = (
            steps["packed_padding_free"]["real_tokens_per_s"] / steps["unpacked_padded"]["real_tokens_per_s"])
        steps["real_tokens_per_s_ratio_grouped_over_padded"] = (
            steps["unpacked_length_grouped"]["real_tokens_per_s"] / steps["unpacked_padded"]["real_tokens_per_s"])
    tmp.cleanup()

    result = {
        "rows": args.n, "turns": "1-3", "length_distribution": f"gamma(shape {GAMMA_SHAPE}), mean {args.mean_chars} "
        "characters", "mean_tokens_per_row": untruncated / args.n, "max_length": args.max_length,
        "batch_size": args.batch_size, "packing_strategy": "bfd", "tokenizer": str(args.model_dir or "tiny preset"),
        "repeats": args.repeats, "seconds": seconds, "cpu_seconds": cpu_seconds, "rows_per_s": rows_per_s,
        "median_rows_per_s": median, "rlmed_tokenize_all_median_s": statistics.median(tokenize_s),
        "rows_per_s_ratio_rlmed_over_trl": ratio, "median_paired_ratio_rlmed_over_trl": paired,
        "cpu_time_ratio_rlmed_over_trl": cpu_ratio, "target_ratio": TARGET, "target_met": ratio >= TARGET,
        "same_input_ids": same_ids, "padding": padding, "training_steps": steps,
        "load_average_1min": {"before_timing": load_before, "after_timing": load_after},
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
                    "datasets": datasets.__version__, "tokenizers": tokenizers.__version__,
                    "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "(unset)")},
    }

    print(f"\nrows/s, median of {args.repeats} (after a warm-up run of each; {result['mean_tokens_per_row']:.0f} "
          "tokens per row on average):")
    for p in PATHS:
        print(f"  {p:<5} {median[p]:9.0f} rows/s   (min {min(rows_per_s[p]):.0f}, max {max(rows_per_s[p]):.0f})")
    print(f"  of which rlmed's tokenize_all: median {result['rlmed_tokenize_all_median_s'] * 1000:.0f} ms")
    print(f"  rlmed / trl (ratio of the medians): {ratio:.2f}x  -> target >= {TARGET}x "
          f"{'MET' if ratio >= TARGET else 'NOT MET'}")
    print(f"  cross-checks: median of the per-pair ratios {paired:.2f}x; by CPU time (this process, all its threads; "
          f"trl's median / rlmed's) {cpu_ratio:.2f}x")
    print(f"  same input_ids on both paths: {same_ids}  (rlmed's path also builds the assistant mask)")
    print(f"training batches of {args.batch_size} rows, max_length {args.max_length}:")
    for key, fig in padding.items():
        fill = f", packed rows {fig['packed_row_fill']:.1%} full" if "packed_row_fill" in fig else ""
        print(f"  {key:<30} padding {fig['padding_fraction']:6.2%}   {fig['batches']:5d} batches, "
              f"{fig['mean_tokens_per_batch']:7.0f} tokens/batch{fill}, loss on {fig['trained_token_fraction']:.1%} "
              f"of tokens, {fig['tokens_lost_to_truncation_fraction']:.2%} lost to truncation")
    if steps:
        print(f"training steps (forward + backward, sdpa, {steps['device']}, {steps['threads']} threads):")
        for key in ("packed_padding_free", "unpacked_padded", "unpacked_length_grouped"):
            fig = steps[key]
            print(f"  {key:<24} {fig['real_tokens_per_s']:9.0f} real tokens/s   {fig['trained_tokens_per_s']:9.0f} "
                  f"trained tokens/s   ({fig['steps']} steps, {fig['seconds']:.1f} s)")
        print(f"  packed padding-free / padded: {steps['real_tokens_per_s_ratio_packed_over_padded']:.2f}x real tokens/s; "
              f"length-grouped / padded: {steps['real_tokens_per_s_ratio_grouped_over_padded']:.2f}x")
    busy = max(load_before, load_after) - 1.0
    if busy > 0.5 * (os.cpu_count() or 1):
        print(f"  note: 1-min load average {load_before:.1f} -> {load_after:.1f} on {os.cpu_count()} cores: other "
              "processes competed for the CPU; trust the cross-checks where they differ")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"written to {args.out}")
    return result


if __name__ == "__main__":
    main()
