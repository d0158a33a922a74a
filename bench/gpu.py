"""Full-parameter SFT and DPO training steps of a Qwen2-shape model on one GPU: `python -m bench.gpu` (CUDA; the two
default presets are expected to take a few minutes on an H100; not yet run on one).

Models: random-init Qwen2ForCausalLM built directly from a Qwen2Config (nothing from the hub), `--preset` picks
(repeatable; default on CUDA: 0.5b and 1.5b):

- 0.5b: the Qwen2.5-0.5B shape, 24 layers, hidden 896, 14 heads (head dim 64), 2 KV heads, intermediate 4864,
  vocab 151936, tied embeddings;
- 1.5b: the Qwen2.5-1.5B shape, 28 layers, hidden 1536, 12 heads (head dim 128), 2 KV heads, intermediate 8960,
  vocab 151936, tied embeddings;
- tiny: 2 layers, hidden 128, 4 heads, 2 KV heads, intermediate 384, vocab 4096 (CPU smoke runs).

Precision (`--precision`): "bf16" (default) keeps weights, gradients and AdamW states in bfloat16, which is what
rlmed's stages do on a GPU (dtype "auto" keeps a bf16 checkpoint in bf16; the Trainer's bf16 autocast is then a
no-op); "amp" keeps float32 master weights and AdamW states and runs forward/backward under torch.autocast(bf16),
which is what the Trainer does with a model loaded in float32. The optimiser is torch.optim.AdamW (lr 1e-5,
fused=True on CUDA). `--device cpu` runs everything in float32 without autocast.

SFT step: zero_grad, forward with labels, backward, AdamW step, on a packed, padding-free batch of `--rows` rows of
`--seq` tokens (default 2 × 4096). Documents have gamma-distributed lengths (shape 2, mean `--doc-mean`, default
600 tokens; seeded) of random token ids; they are laid end to end and cut into rows (a document may continue on
the next row), position_ids restart at 0 at every document start, the first label of every document is -100, and
no attention_mask is passed, so transformers finds the document boundaries from the position_ids: sdpa and eager
get a block-diagonal causal mask, flex_attention a block mask, flash_attention_2 varlen kernels (cu_seqlens).
`--attn` picks (default sdpa; flex_attention trains on CUDA only). Before any timing, a packing check runs on the
tiny shape with the chosen attention on the chosen device (in float32; bf16 for flash_attention_2): the logits
of a packed row's second document must equal those of that document run alone (and differ clearly from a run
where it can see the first document); it is recorded, and a failure stops the run, since the padding-free figures
would then be wrong. `--checkpointing` turns on activation checkpointing
(activation_checkpointing_enable where transformers has it, else gradient_checkpointing_enable; use_reentrant
False; `--checkpoint-every n` checkpoints every n-th layer only); `--compile` wraps the models in torch.compile.

DPO step: B = `--dpo-pairs` pairs (default 4) of prompt + chosen answer and the same prompt + rejected answer, each
length gamma-distributed (shape 2, means `--prompt-mean` and `--answer-mean`, default 256 each, clipped to
`--seq`); the 2·B sequences go through the model as one right-padded batch (padded to the longest, with an
attention mask), as trl's concatenated forward does; per-sequence log-probabilities are sums over answer tokens of
log_softmax(logits in float32); loss rlmed.rl.dpo_math.dpo_sigmoid (β 0.1), averaged over the pairs. Two variants,
sharing one policy model and its optimiser, stepped on the same batches:

- on the fly: a frozen copy of the initial policy (the reference) runs under no_grad in every step;
- precomputed: the reference log-probabilities of every batch are computed once before the timed loop (their cost
  is reported per batch: it is paid once per epoch instead of once per step, so it is the same total for a single
  epoch; what precomputing saves per step is that forward, and the reference's memory during training), then only
  the policy runs per step.

Timing (as bench.mole): `--warmup` unmeasured steps first, then `--steps` timed steps; on CUDA each step is timed
between torch.cuda.synchronize calls. The DPO variants are stepped alternately, in pairs on the same batch, the
order flipping every pair. `--batches` distinct batches (default 4) are cycled, for SFT too. `--parts sft` or
`--parts dpo` runs one phase only.

Figures, per preset:

- SFT tokens/s: tokens per step / the median step time (every token is real, there is no padding).
- MFU = tokens/s · FLOPs per token / peak. FLOPs per token = 6·N + 12·L·H·Q·T, N the non-embedding parameters
  (the input embedding, and the lm_head when untied, left out), L layers, H heads, Q head dim, T the sequence
  length, as nanoGPT and torchtitan count: forward + backward matmuls, no activation-checkpointing recomputation,
  and the attention term over the full T×T (neither causality nor the packing is credited). Packed documents
  attend only within themselves, so the attention the model really does is smaller; the second figure replaces T
  by the token-weighted mean document segment length Σd²/Σd (a token in a segment of d tokens attends over d, so
  this is the per-token average; the plain mean is recorded beside it). A third figure adds 6·V·D for the output
  projection, which the model does compute: torchtitan's code counts it (its N leaves out only nn.Embedding
  modules, and its models have an untied output layer), nanoGPT too (its tied wte stays in N). Peak: 989 TFLOP/s
  dense bf16 for H100/H200 SXM (756 for H100 PCIe, 312 for A100), from torch.cuda.get_device_name;
  `--peak-tflops` overrides; for another device MFU is not computed unless given. On CPU MFU is not computed.
  As a baseline measured in the same run, the rate of an 8192³ bf16 matmul is given too, and each MFU's share of
  it (what the card reaches on plain matmuls).
- DPO: median step time of each variant, the ratio precomputed / on-the-fly (target ≤ 0.8×; the median of the
  per-pair ratios as a cross-check), tokens/s (real, unpadded tokens of the 2·B sequences per step; the padded
  count is recorded), the reference precompute time per batch.
- Peak memory (CUDA, torch.cuda.max_memory_allocated): SFT over its whole phase (model, optimiser, steps); DPO per
  variant, the statistics reset before every timed step, with the reference model resident in both; then, the
  reference deleted, a few precomputed steps again: that peak is the precomputed variant's figure. Each preset and
  each phase starts after the previous one's tensors are freed. On CPU memory is not measured (the process's
  peak RSS is recorded for information).

A preset or phase that runs out of GPU memory is recorded as such and the run goes on. Versions (torch, CUDA,
transformers, flash-attn if present), the device and all settings go into the JSON: bench/results/gpu.json, or
`--out PATH`.

Without a CUDA device `python -m bench.gpu` measures nothing: it says so, writes {"status": "not measured", ...}
and exits 0. `python -m bench.gpu --device cpu --preset tiny --seq 256 --steps 2 --warmup 1` runs everything in
float32 on CPU as a smoke run (well under a minute).

On the GPU machine of the workplace's device tool (run verb; the repository tree is carried automatically, and
python3 there has torch and transformers, the only libraries bench.gpu and the rlmed modules it imports need -
rlmed.rl.dpo_math is plain torch - so no wheels have to be carried and nothing installed):

    run(command="PYTHONUNBUFFERED=1 python3 -m bench.gpu --out $OUT/gpu.json", timeout_s=600)

then copy gpu.json from the reply's files_at to bench/results/gpu.json. Further runs e.g. with `--preset 1.5b
--checkpointing --rows 4`, `--compile`, `--attn flex_attention`. flash_attention_2 needs the flash-attn package,
which is not in that machine's package list; PyPI has no binary wheel of it (a source distribution only; prebuilt
wheels are release assets of its GitHub project, built per torch/CUDA version, and usually larger than the 64 MiB
a call carries). A wheel that fits would go as the device tool's README says: `python3 -m pip download --no-deps
--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 -d .whl NAME==VER`
here, `.whl` in carry, and the command starting with `python3 -m pip install -q --no-index --no-deps --target
/tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site;`. flex_attention (in torch) is the padding-free kernel that
needs nothing carried.
"""

from __future__ import annotations

import argparse
import copy
import gc
import itertools
import json
import platform
import random
import resource
import statistics
import sys
import time
from pathlib import Path

from bench.presets import ROOT

PRESETS = {
    "tiny": {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
             "intermediate_size": 384, "vocab_size": 4096, "tie_word_embeddings": True},
    "0.5b": {"num_hidden_layers": 24, "hidden_size": 896, "num_attention_heads": 14, "num_key_value_heads": 2,
             "intermediate_size": 4864, "vocab_size": 151936, "tie_word_embeddings": True},
    "1.5b": {"num_hidden_layers": 28, "hidden_size": 1536, "num_attention_heads": 12, "num_key_value_heads": 2,
             "intermediate_size": 8960, "vocab_size": 151936, "tie_word_embeddings": True},
}
ATTENTION = ("sdpa", "flash_attention_2", "flex_attention", "eager")
DPO_TARGET = 0.8
SFT_MFU_TARGET = 0.40  # at 1.5b (issue 9)
GAMMA_SHAPE = 2.0
LR = 1e-5
BETA = 0.1


# ---------------------------------------------------------------------------------------------- model and counts

def make_config(preset: str, attn: str = "sdpa", **overrides):
    from transformers import Qwen2Config

    config = Qwen2Config(**{**PRESETS[preset], **overrides}, use_cache=False, max_position_embeddings=32768)
    config._attn_implementation = attn
    return config


def build_model(config, device, dtype, seed: int = 0):
    """Random-init Qwen2ForCausalLM, initialised directly on `device` in `dtype`."""
    import torch
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForCausalLM._from_config(config, attn_implementation=config._attn_implementation, dtype=dtype)
    return model


def parameter_counts(model) -> dict[str, int]:
    """total (tied weights once), embedding (input embedding), lm_head (0 when tied), non_embedding (the rest)."""
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    untied_head = 0 if head is embedding else head.numel()
    return {"total": total, "embedding": embedding.numel(), "lm_head_untied": untied_head,
            "non_embedding": total - embedding.numel() - untied_head}


def non_embedding_parameters(model) -> int:
    return parameter_counts(model)["non_embedding"]


def flops_per_token(n_non_embedding: int, layers: int, heads: int, head_dim: int, seq: float) -> float:
    """6·N + 12·L·H·Q·T (forward + backward, attention over the full T, as nanoGPT and torchtitan)."""
    return 6 * n_non_embedding + 12 * layers * heads * head_dim * seq


def peak_flops_for(device_name: str) -> float | None:
    """Dense bf16 peak FLOP/s from the device name, None when unknown."""
    name = device_name.lower()
    if "h100" in name or "h200" in name:
        return 756e12 if "pcie" in name else 989e12
    if "a100" in name:
        return 312e12
    return None


# ------------------------------------------------------------------------------------------------------------ data

def gamma_lengths(rng: random.Random, count: int, mean: float, low: int = 1, high: int | None = None) -> list[int]:
    """`count` gamma(shape 2, mean `mean`) lengths, rounded, clipped to [low, high]."""
    out = [max(low, round(rng.gammavariate(GAMMA_SHAPE, mean / GAMMA_SHAPE))) for _ in range(count)]
    return [min(high, v) for v in out] if high is not None else out


def pack_rows(doc_lengths: list[int], rows: int, seq: int, vocab: int, generator):
    """Documents laid end to end and cut into `rows` rows of `seq` tokens (a document may continue on the next
    row). Returns input_ids [rows, seq], position_ids [rows, seq] (0 at every document start, continuing across a
    row cut) and the lengths of the segments the rows hold (each row cut makes a new segment)."""
    import torch

    need = rows * seq
    positions: list[int] = []
    for length in doc_lengths:
        positions.extend(range(length))
        if len(positions) >= need:
            break
    if len(positions) < need:
        raise ValueError("not enough documents to fill the rows")
    position_ids = torch.tensor(positions[:need], dtype=torch.long).view(rows, seq)
    input_ids = torch.randint(0, vocab, (rows, seq), generator=generator)
    segments = []
    for row in position_ids.tolist():
        starts = [i for i in range(seq) if i == 0 or row[i] != row[i - 1] + 1] + [seq]
        segments.extend(b - a for a, b in itertools.pairwise(starts))
    return input_ids, position_ids, segments


def sft_batches(count: int, rows: int, seq: int, vocab: int, doc_mean: float, seed: int = 1234) -> list[dict]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    batches = []
    for _ in range(count):
        lengths = gamma_lengths(rng, max(16, 2 * rows * seq // max(1, int(doc_mean))), doc_mean)
        while sum(lengths) < rows * seq:
            lengths += gamma_lengths(rng, len(lengths), doc_mean)
        input_ids, position_ids, segments = pack_rows(lengths, rows, seq, vocab, generator)
        labels = input_ids.clone()
        labels[position_ids == 0] = -100  # no document predicts its first token from the previous one
        batches.append({"input_ids": input_ids, "position_ids": position_ids, "labels": labels,
                        "segments": segments})
    return batches


def dpo_batches(count: int, pairs: int, seq: int, vocab: int, prompt_mean: float, answer_mean: float,
                seed: int = 4321) -> list[dict]:
    """Right-padded [2·pairs, width] batches: rows 0..B-1 chosen, B..2B-1 rejected, same prompt per pair."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    batches = []
    for _ in range(count):
        prompts = gamma_lengths(rng, pairs, prompt_mean, high=seq - 2)
        chosen = gamma_lengths(rng, pairs, answer_mean)
        rejected = gamma_lengths(rng, pairs, answer_mean)
        sequences = []  # (prompt tokens, answer tokens)
        for side in (chosen, rejected):
            for i in range(pairs):
                answer = min(side[i], seq - prompts[i])
                sequences.append((prompts[i], answer))
        prompt_ids = [torch.randint(0, vocab, (p,), generator=generator) for p in prompts]
        width = max(p + a for p, a in sequences)
        input_ids = torch.zeros((2 * pairs, width), dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        answer_mask = torch.zeros_like(input_ids)
        for row, (p, a) in enumerate(sequences):
            input_ids[row, :p] = prompt_ids[row % pairs]
            input_ids[row, p:p + a] = torch.randint(0, vocab, (a,), generator=generator)
            attention_mask[row, :p + a] = 1
            answer_mask[row, p:p + a] = 1
        batches.append({"input_ids": input_ids, "attention_mask": attention_mask, "answer_mask": answer_mask,
                        "real_tokens": int(attention_mask.sum()), "padded_tokens": input_ids.numel()})
    return batches


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


# ------------------------------------------------------------------------------------------------- packing check

def packing_check(attn: str, device, dtype, seed: int = 0) -> dict:
    """Logits of the second document of a packed row (position_ids restarting, no attention mask) against the
    same document run alone, and against the same packed row with position_ids that do not restart (so the second
    document sees the first: what a leak would look like)."""
    import torch

    config = make_config("tiny", attn)
    model = build_model(config, device, dtype, seed).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    first, second = 37, 29
    ids = torch.randint(0, config.vocab_size, (1, first + second), generator=generator).to(device)
    packed_pos = torch.cat([torch.arange(first), torch.arange(second)]).unsqueeze(0).to(device)
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=packed_pos, use_cache=False).logits[0, first:].float()
        alone = model(input_ids=ids[:, first:], position_ids=torch.arange(second, device=device).unsqueeze(0),
                      use_cache=False).logits[0].float()
    # the leak comparison uses the alone positions for the second document, so only the attention differs
    leak_pos = torch.cat([torch.arange(first), torch.arange(second)]).unsqueeze(0).to(device)
    leak_mask = torch.ones_like(ids)  # an explicit all-ones mask turns the packing detection off
    with torch.no_grad():
        leaked = model(input_ids=ids, position_ids=leak_pos, attention_mask=leak_mask,
                       use_cache=False).logits[0, first:].float()
    diff = (packed - alone).abs().max().item()
    leak = (leaked - alone).abs().max().item()
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2 * max(1.0, alone.abs().max().item())
    del model
    return {"attn": attn, "dtype": str(dtype), "max_abs_diff_packed_vs_alone": diff,
            "max_abs_diff_unisolated_vs_alone": leak, "tolerance": tolerance,
            "isolated": diff <= tolerance and leak > 10 * diff}


# ------------------------------------------------------------------------------------------------------- steps

class Runner:
    """What a step needs: device, dtype handling, the timed-step wrapper."""

    def __init__(self, device, precision: str):
        import torch

        self.device = device
        self.cuda = device.type == "cuda"
        if not self.cuda:
            self.weight_dtype, self.autocast = torch.float32, False
        elif precision == "amp":
            self.weight_dtype, self.autocast = torch.float32, True
        else:
            self.weight_dtype, self.autocast = torch.bfloat16, False

    def context(self):
        import contextlib

        import torch

        if self.autocast:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def sync(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def peak_mib(self) -> float | None:
        import torch

        return round(torch.cuda.max_memory_allocated() / 2**20, 1) if self.cuda else None

    def free(self) -> None:
        import torch

        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def optimizer(self, model):
        import torch

        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=LR, fused=True) if self.cuda else torch.optim.AdamW(params, lr=LR)


def prepare(model, args, train: bool):
    if train and args.checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # newer transformers' name; the old one warns there
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs,
                                                  every_n_layers=args.checkpoint_every)
        elif args.checkpoint_every != 1:
            raise SystemExit("--checkpoint-every needs a transformers with activation_checkpointing_enable")
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.train(train)
    if args.compile:
        import torch

        model = torch.compile(model)
    return model


def sft_step(runner: Runner, model, optimizer, batch: dict) -> float:
    runner.sync()
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    with runner.context():
        loss = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"],
                     use_cache=False).loss
    loss.backward()
    optimizer.step()
    runner.sync()
    return time.perf_counter() - start


def sequence_logps(model, batch: dict):
    """Sum over answer tokens of log π(token | prefix), per row.  -> [2B] float32"""
    import torch

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    labels = batch["input_ids"][:, 1:]
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return (logps * batch["answer_mask"][:, 1:]).sum(-1)


def reference_logps(runner: Runner, reference, batch: dict):
    import torch

    with torch.no_grad(), runner.context():
        return sequence_logps(reference, batch)


def dpo_step(runner: Runner, policy, optimizer, batch: dict, reference=None, precomputed=None) -> float:
    """One DPO step; the reference log-probs come from `reference` run now, or from `precomputed`."""
    from rlmed.rl.dpo_math import dpo_sigmoid

    runner.sync()
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    ref = reference_logps(runner, reference, batch) if precomputed is None else precomputed
    with runner.context():
        logps = sequence_logps(policy, batch)
    pairs = logps.shape[0] // 2
    loss = dpo_sigmoid(logps[:pairs], logps[pairs:], ref[:pairs], ref[pairs:], BETA).mean()
    loss.backward()
    optimizer.step()
    runner.sync()
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------------------------ phases

def is_oom(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def run_sft(runner: Runner, config, args, flops: dict, peak: float | None, matmul: float | None) -> dict:
    runner.free()
    runner.reset_peak()
    model = prepare(build_model(config, runner.device, runner.weight_dtype), args, train=True)
    optimizer = runner.optimizer(model)
    batches = [to_device(b, runner.device) for b in
               sft_batches(args.batches, args.rows, args.seq, config.vocab_size, args.doc_mean)]
    for i in range(args.warmup):
        sft_step(runner, model, optimizer, batches[i % len(batches)])
    times = [sft_step(runner, model, optimizer, batches[i % len(batches)]) for i in range(args.steps)]
    peak_mib = runner.peak_mib()
    del model, optimizer, batches
    runner.free()
    median = statistics.median(times)
    tokens = args.rows * args.seq
    tps = tokens / median
    result = {"step_s": times, "median_step_s": median, "tokens_per_step": tokens, "tokens_per_s": tps,
              "peak_memory_mib": peak_mib}
    if peak is None:
        result["mfu"] = {"status": "not computed",
                         "reason": "CPU run" if not runner.cuda else "unknown device peak: pass --peak-tflops"}
    else:
        result["mfu"] = {name: tps * value / peak for name, value in flops.items()}
        if matmul:
            result["share_of_measured_matmul_rate"] = {name: tps * value / matmul for name, value in flops.items()}
    return result


def run_dpo(runner: Runner, config, args) -> dict:
    import torch

    runner.free()
    runner.reset_peak()
    base = build_model(config, runner.device, runner.weight_dtype)
    reference = copy.deepcopy(base).requires_grad_(False).eval()
    policy = prepare(base, args, train=True)
    del base
    # held in one dict so that the reference (and at the end everything) can be dropped while step() lives
    state = {"policy": policy, "optimizer": runner.optimizer(policy),
             "reference": torch.compile(reference) if args.compile else reference}
    del policy, reference
    batches = [to_device(b, runner.device) for b in
               dpo_batches(args.batches, args.dpo_pairs, args.seq, config.vocab_size, args.prompt_mean,
                           args.answer_mean)]
    # the precomputed table: one reference forward per batch, done (and timed) before training
    reference_logps(runner, state["reference"], batches[0])  # warm-up of the reference forward, not timed
    table, precompute_s = [], []
    for batch in batches:
        runner.sync()
        start = time.perf_counter()
        table.append(reference_logps(runner, state["reference"], batch))
        runner.sync()
        precompute_s.append(time.perf_counter() - start)

    def step(variant: str, i: int) -> float:
        batch = batches[i % len(batches)]
        if variant == "on_the_fly":
            return dpo_step(runner, state["policy"], state["optimizer"], batch, reference=state["reference"])
        return dpo_step(runner, state["policy"], state["optimizer"], batch, precomputed=table[i % len(batches)])

    variants = ("on_the_fly", "precomputed")
    for i in range(args.warmup):
        for v in variants:
            step(v, i)
    times: dict[str, list[float]] = {v: [] for v in variants}
    peaks: dict[str, list[float]] = {v: [] for v in variants}
    for i in range(args.steps):
        for v in (variants if i % 2 == 0 else variants[::-1]):
            runner.reset_peak()
            times[v].append(step(v, i))
            if runner.cuda:
                peaks[v].append(runner.peak_mib())
    # the precomputed variant needs no reference model during training: its peak with the reference gone
    del state["reference"]
    runner.free()
    runner.reset_peak()
    freed_steps = [step("precomputed", i) for i in range(max(2, min(args.steps, 3)))]
    freed_peak = runner.peak_mib()
    state.clear()
    table.clear()
    runner.free()

    real = statistics.mean(b["real_tokens"] for b in batches)
    padded = statistics.mean(b["padded_tokens"] for b in batches)
    median = {v: statistics.median(times[v]) for v in variants}
    ratio = median["precomputed"] / median["on_the_fly"]
    paired = statistics.median(p / o for p, o in zip(times["precomputed"], times["on_the_fly"]))
    result = {v: {"step_s": times[v], "median_step_s": median[v], "tokens_per_s": real / median[v],
                  "padded_tokens_per_s": padded / median[v]} for v in variants}
    result["on_the_fly"]["peak_memory_mib"] = max(peaks["on_the_fly"]) if peaks["on_the_fly"] else None
    result["precomputed"]["peak_memory_mib"] = freed_peak
    result["precomputed"]["peak_memory_mib_reference_resident"] = (max(peaks["precomputed"])
                                                                   if peaks["precomputed"] else None)
    result["precomputed"]["step_s_reference_freed"] = freed_steps
    result.update({
        "pairs_per_step": args.dpo_pairs, "sequences_per_step": 2 * args.dpo_pairs,
        "mean_real_tokens_per_step": real, "mean_padded_tokens_per_step": padded,
        "padding_fraction": 1 - real / padded,
        "reference_precompute_s_per_batch": statistics.median(precompute_s),
        "step_time_ratio_precomputed_over_on_the_fly": ratio, "median_paired_ratio": paired,
        "target_ratio": DPO_TARGET, "target_met": ratio <= DPO_TARGET,
    })
    return result


def matmul_rate(device) -> float:
    """FLOP/s of an 8192³ bf16 matmul on this device (median of 10 after 3 warm-ups)."""
    import torch

    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    times = []
    for i in range(13):
        torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - start)
    del a, b
    torch.cuda.empty_cache()
    return 2 * n**3 / statistics.median(times)


def run_preset(preset: str, runner: Runner, args, peak: float | None, matmul: float | None) -> dict:
    config = make_config(preset, args.attn)
    layers, heads = config.num_hidden_layers, config.num_attention_heads
    head_dim = config.hidden_size // heads
    counts = parameter_counts(build_model(config, "meta", runner.weight_dtype))
    n = counts["non_embedding"]
    segments = [s for b in sft_batches(args.batches, args.rows, args.seq, config.vocab_size, args.doc_mean)
                for s in b["segments"]]
    weighted = sum(s * s for s in segments) / sum(segments)
    flops = {"full_T": flops_per_token(n, layers, heads, head_dim, args.seq),
             "mean_document": flops_per_token(n, layers, heads, head_dim, weighted),
             "full_T_with_lm_head": flops_per_token(n, layers, heads, head_dim, args.seq)
             + 6 * config.vocab_size * config.hidden_size}
    out: dict = {"model": {**PRESETS[preset], "head_dim": head_dim}, "parameters": counts,
                 "flops_per_token": flops,
                 "segments": {"count": len(segments), "mean": statistics.mean(segments),
                              "token_weighted_mean": weighted}}
    for part, fn in (("sft", lambda: run_sft(runner, config, args, flops, peak, matmul)),
                     ("dpo", lambda: run_dpo(runner, config, args))):
        if part not in args.parts:
            continue
        print(f"  {preset} {part} ...", flush=True)
        try:
            out[part] = fn()
        except Exception as error:  # out of memory is a result, anything else is not
            if not is_oom(error):
                raise
            out[part] = {"status": "out of memory", "error": str(error).splitlines()[0]}
        runner.free()  # here, not in the except block, whose traceback still holds the phase's tensors
    if preset == "1.5b" and "mfu" in out.get("sft", {}) and "full_T" in out["sft"]["mfu"]:
        out["sft"]["target_mfu"] = SFT_MFU_TARGET
        out["sft"]["target_met"] = out["sft"]["mfu"]["full_T"] >= SFT_MFU_TARGET
    return out


# ---------------------------------------------------------------------------------------------------- printing

def print_preset(preset: str, r: dict) -> None:
    p = r["parameters"]
    f = r["flops_per_token"]
    print(f"\n{preset}: {p['total']:,} parameters, {p['non_embedding']:,} non-embedding; FLOPs/token "
          f"{f['full_T']:.4g} (full T), {f['mean_document']:.4g} (token-weighted mean segment "
          f"{r['segments']['token_weighted_mean']:.0f} tokens), {f['full_T_with_lm_head']:.4g} (full T + lm_head)")
    sft = r.get("sft")
    if sft and "status" in sft:
        print(f"  SFT: {sft['status']} ({sft['error']})")
    elif sft:
        print(f"  SFT: {sft['tokens_per_s']:,.0f} tokens/s (median step {sft['median_step_s'] * 1000:.1f} ms, "
              f"{sft['tokens_per_step']} tokens/step, min {min(sft['step_s']) * 1000:.1f}, "
              f"max {max(sft['step_s']) * 1000:.1f})")
        mfu = sft["mfu"]
        if "status" in mfu:
            print(f"  MFU: not computed ({mfu['reason']})")
        else:
            line = (f"  MFU: {mfu['full_T']:.1%} (full T), {mfu['mean_document']:.1%} (mean document), "
                    f"{mfu['full_T_with_lm_head']:.1%} (full T + lm_head)")
            if "target_mfu" in sft:
                line += f"  -> target >= {sft['target_mfu']:.0%} {'MET' if sft['target_met'] else 'NOT MET'}"
            print(line)
            if "share_of_measured_matmul_rate" in sft:
                print(f"  share of this card's measured bf16 matmul rate: "
                      f"{sft['share_of_measured_matmul_rate']['full_T']:.1%} (full T)")
        if sft["peak_memory_mib"] is not None:
            print(f"  peak memory {sft['peak_memory_mib']:,.0f} MiB")
    dpo = r.get("dpo")
    if dpo and "status" in dpo:
        print(f"  DPO: {dpo['status']} ({dpo['error']})")
    elif dpo:
        print(f"  DPO ({dpo['pairs_per_step']} pairs/step, {dpo['mean_real_tokens_per_step']:.0f} real tokens of "
              f"{dpo['mean_padded_tokens_per_step']:.0f} padded):")
        for v in ("on_the_fly", "precomputed"):
            d = dpo[v]
            mem = f", peak {d['peak_memory_mib']:,.0f} MiB" if d["peak_memory_mib"] is not None else ""
            print(f"    {v:<12} median step {d['median_step_s'] * 1000:9.1f} ms, "
                  f"{d['tokens_per_s']:,.0f} tokens/s{mem}")
        ratio = dpo["step_time_ratio_precomputed_over_on_the_fly"]
        print(f"    precomputed / on-the-fly: {ratio:.2f}x  -> target <= {DPO_TARGET}x "
              f"{'MET' if dpo['target_met'] else 'NOT MET'} (median per-pair ratio {dpo['median_paired_ratio']:.2f}x)")
        print(f"    reference precompute {dpo['reference_precompute_s_per_batch'] * 1000:.1f} ms per batch (once)")


# -------------------------------------------------------------------------------------------------------- main

def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m bench.gpu",
                                 description="Full-parameter SFT and DPO steps of Qwen2-shape models on a GPU")
    ap.add_argument("--device", choices=("cuda", "cpu"), default=None,
                    help="default: cuda where there is one; without one nothing is measured unless cpu is named")
    ap.add_argument("--preset", choices=sorted(PRESETS), action="append",
                    help="repeatable; default 0.5b and 1.5b on CUDA, tiny on CPU")
    ap.add_argument("--parts", choices=("sft", "dpo"), nargs="+", default=["sft", "dpo"])
    ap.add_argument("--attn", choices=ATTENTION, default="sdpa")
    ap.add_argument("--precision", choices=("bf16", "amp"), default="bf16")
    ap.add_argument("--checkpointing", action="store_true", help="activation checkpointing (non-reentrant)")
    ap.add_argument("--checkpoint-every", type=int, default=1,
                    help="with --checkpointing: checkpoint every n-th layer only (transformers with "
                         "activation_checkpointing_enable)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the models")
    ap.add_argument("--seq", type=int, default=4096, help="SFT row length; DPO maximum sequence length")
    ap.add_argument("--rows", type=int, default=2, help="packed SFT rows per step")
    ap.add_argument("--doc-mean", type=float, default=600.0, help="mean SFT document length (gamma, shape 2)")
    ap.add_argument("--dpo-pairs", type=int, default=4)
    ap.add_argument("--prompt-mean", type=float, default=256.0)
    ap.add_argument("--answer-mean", type=float, default=256.0)
    ap.add_argument("--batches", type=int, default=4, help="distinct batches, cycled")
    ap.add_argument("--steps", type=int, default=10, help="timed steps (DPO: timed pairs)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, TFLOP/s")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu.json")
    return ap.parse_args(argv)


def write(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"written to {path}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    machine = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
               "cuda": torch.version.cuda, "transformers": transformers.__version__}
    try:
        import flash_attn

        machine["flash_attn"] = flash_attn.__version__
    except ImportError:
        machine["flash_attn"] = None
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    cuda = torch.cuda.is_available()
    if args.device is None and not cuda:
        reason = "no CUDA device on this machine"
        print(f"{reason}: the GPU rows (SFT and DPO tokens/s, MFU, peak memory) are not measured.")
        print("(`--device cpu --preset tiny --seq 256 --steps 2 --warmup 1` is a CPU smoke run of the same code)")
        write(args.out, {"status": "not measured", "reason": reason, "machine": machine, "settings": settings})
        return 0
    if args.device == "cuda" and not cuda:
        sys.exit("--device cuda: no CUDA device here")
    device = torch.device(args.device or "cuda")
    presets = args.preset or (["0.5b", "1.5b"] if device.type == "cuda" else ["tiny"])
    runner = Runner(device, args.precision)
    peak = matmul = None
    if device.type == "cuda":
        machine.update({"device": torch.cuda.get_device_name(), "capability": list(torch.cuda.get_device_capability()),
                        "cudnn": torch.backends.cudnn.version()})
        peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops_for(machine["device"])
        matmul = matmul_rate(device)
    else:
        machine.update({"device": "cpu", "threads": torch.get_num_threads()})
    print(f"bench.gpu on {machine['device']}: presets {', '.join(presets)}, attn {args.attn}, "
          f"{'float32' if device.type == 'cpu' else args.precision}, seq {args.seq}, SFT {args.rows} rows/step, "
          f"DPO {args.dpo_pairs} pairs/step, checkpointing {'on' if args.checkpointing else 'off'}, "
          f"compile {'on' if args.compile else 'off'}; {args.warmup} warm-up + {args.steps} timed steps")
    if device.type == "cuda":
        print(f"peak: {'%.0f TFLOP/s' % (peak / 1e12) if peak else 'unknown (MFU not computed; --peak-tflops)'}; "
              f"measured 8192^3 bf16 matmul: {matmul / 1e12:.0f} TFLOP/s")

    # the masking logic does not depend on the dtype: float32 keeps the comparison tight; flash-attn needs bf16
    try:
        check = packing_check(args.attn, device, torch.bfloat16 if args.attn == "flash_attention_2" else torch.float32)
    except (ImportError, ValueError) as error:  # e.g. flash_attention_2 without the flash-attn package
        reason = f"--attn {args.attn} unavailable: {str(error).splitlines()[0]}"
        print(reason)
        write(args.out, {"status": "failed", "reason": reason, "machine": machine, "settings": settings})
        return 1
    print(f"packing check ({args.attn}): packed vs alone max |diff| {check['max_abs_diff_packed_vs_alone']:.2e} "
          f"(tolerance {check['tolerance']:.0e}), unisolated vs alone {check['max_abs_diff_unisolated_vs_alone']:.2e}"
          f" -> {'documents isolated' if check['isolated'] else 'NOT ISOLATED'}")
    result = {"status": "measured", "device": str(device), "machine": machine, "settings": settings,
              "dtype": str(runner.weight_dtype), "autocast_bf16": runner.autocast,
              "optimizer": f"torch.optim.AdamW(lr={LR}{', fused=True' if runner.cuda else ''})",
              "peak_flops": peak, "measured_matmul_flops": matmul, "packing_check": check, "presets": {}}
    if not check["isolated"]:
        result["status"] = "failed: packed documents are not isolated"
        write(args.out, result)
        return 1
    for preset in presets:
        result["presets"][preset] = run_preset(preset, runner, args, peak, matmul)
        print_preset(preset, result["presets"][preset])
    if device.type == "cpu":
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.steps < 5:
        print(f"(only {args.steps} timed steps: too few for a reliable median; use --steps 5 or more)")
    write(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
