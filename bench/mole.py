"""Cost of a MoLE training step against plain LoRA of the same rank budget: `python -m bench.mole` (about a
minute on 2 CPU cores).

Both variants adapt every linear layer of the same model (default: the tiny.yaml shape, vocab 4096, hidden 128,
2 layers; `--preset 0.5b`: a ~0.5B-parameter random-init Qwen2-shape model, 24 layers, hidden 896, bf16 on CUDA,
meant for a GPU machine. On CPU it runs in float32 and at the default batch needs about 12 GB of RAM per process
and minutes per step; `--preset 0.5b --batch 1 --seq 64 --warmup 1 --steps 2` is a CPU smoke run of a few minutes):

- MoLE (rlmed.models.mole): 1 universal + 3 specific experts of rank r each (default r = 8), dense noisy routing,
  the MoleSettings defaults otherwise (`--aux-loss-coef` adds the load-balancing loss to the step);
- LoRA (rlmed.models.lora): one adapter of rank 4·r, the same total rank budget, alpha scaled so alpha/r is the
  same (2) in both.

Their trainable parameters are the same apart from MoLE's router and noise weights (2·T·in per layer).
A step is what a trainer does per batch: zero_grad, forward with labels on the same batch of random token ids
(default 8 × 256), backward, AdamW step (lr 1e-4, over the trainable parameters).

Figures:

- step time: both models live in this process and are stepped alternately, in pairs (the order flips every pair,
  so neither always runs on a warmer cache), after warm-up steps of each; the median of each and the ratio
  MoLE / LoRA, against the target of 1.3×. On CUDA each step is timed between synchronisations. Two cross-checks
  less sensitive to other load on the machine are given too: the median of the per-pair ratios (the two steps of
  a pair run back to back) and fastest step / fastest step; and the 1-min load average before and after.
- peak memory: each variant runs a few steps alone in its own fresh subprocess (`--child --variant mole|lora`,
  which prints one JSON line), so the two never share a high-water mark and the parent's two resident models count
  for neither. On CUDA the figure is torch.cuda.max_memory_allocated of that process (its whole life, model load
  included; no reset needed, nothing else ran there); on CPU it is the process's peak RSS
  (getrusage(RUSAGE_SELF).ru_maxrss). The peak RSS includes the interpreter and the imported libraries (several
  hundred MiB, the same for both), which dwarf the tiny model, so the training part is given too: the peak minus
  the same measure taken just before the first step (model loaded, wrapped, every weight read once so that
  memory-mapped weights are resident, optimizer built). Both ratios are given, MoLE / LoRA.
- trainable parameters of both, and MoLE's router + noise share of them.

torch's thread count is left as it is. Writes bench/results/mole.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.presets import PRESETS, ROOT, SAMPLE
NUM_EXPERTS = 3  # specific experts; with the universal one, 4 experts of rank r = one LoRA of rank 4·r
TARGET = 1.3
VARIANTS = ("mole", "lora")


def build_model_dir(preset: str, out_dir: Path) -> Path:
    """The preset's model folder (random init, tokenizer trained on the sample corpus), via the tiny-model cache."""
    from rlmed.models.tiny import TinySpec, build_tiny

    with (SAMPLE / "corpus.jsonl").open(encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    return build_tiny(TinySpec(**PRESETS[preset]), texts, out_dir)


def device_and_dtype():
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    return torch.device("cpu"), torch.float32


def make_variant(variant: str, model_dir: Path, r: int, aux_loss_coef: float, lr: float):
    """(model, optimizer) for one variant, on the device, in train mode."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlmed.models import lora, mole

    device, dtype = device_and_dtype()
    torch.manual_seed(0)  # the same base weights are loaded; this fixes the adapters' initialisation
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    if variant == "mole":
        model = mole.wrap(base, mole.MoleSettings(r=r, alpha=2 * r, num_experts=NUM_EXPERTS,
                                                  aux_loss_coef=aux_loss_coef))
    else:
        model = lora.wrap(base, lora.LoraSettings(r=(NUM_EXPERTS + 1) * r, alpha=2 * (NUM_EXPERTS + 1) * r))
    model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    return model, optimizer


def make_batch(vocab_size: int, batch: int, seq: int):
    import torch

    device, _ = device_and_dtype()
    generator = torch.Generator().manual_seed(1234)
    return torch.randint(0, vocab_size, (batch, seq), generator=generator).to(device)


def train_step(variant: str, model, optimizer, input_ids, aux_loss_coef: float) -> float:
    """One step; returns its wall time in seconds (CUDA-synchronised)."""
    import torch

    from rlmed.models import mole

    cuda = input_ids.is_cuda
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss = model(input_ids=input_ids, labels=input_ids).loss
    if variant == "mole" and aux_loss_coef:
        loss = loss + aux_loss_coef * mole.aux_loss(model)
    loss.backward()
    optimizer.step()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def trainable_parameters(model) -> dict[str, int]:
    named = [(n, p.numel()) for n, p in model.named_parameters() if p.requires_grad]
    return {"trainable": sum(n for _, n in named),
            "router_and_noise": sum(n for name, n in named if "lora_router" in name or "lora_noise" in name)}


def rss_mib() -> float:
    """This process's peak resident set so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: argparse.Namespace) -> None:
    """Run `args.mem_steps` steps of one variant alone; print its memory figures as one JSON line."""
    import torch

    model, optimizer = make_variant(args.variant, args.model_dir, args.r, args.aux_loss_coef, args.lr)
    input_ids = make_batch(model.config.vocab_size, args.batch, args.seq)
    cuda = input_ids.is_cuda
    with torch.no_grad():  # page in weights loaded lazily (memory-mapped), so the baseline holds them
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.sum()
    before = torch.cuda.memory_allocated() / 2**20 if cuda else rss_mib()
    times = [train_step(args.variant, model, optimizer, input_ids, args.aux_loss_coef)
             for _ in range(args.mem_steps)]
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else rss_mib()
    print(json.dumps({"variant": args.variant, "measure": "cuda_max_memory_allocated" if cuda else "peak_rss",
                      "before_first_step_mib": round(before, 1), "peak_mib": round(peak, 1),
                      "training_mib": round(peak - before, 1), "step_s": times}))


def measure_memory(variant: str, model_dir: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", "bench.mole", "--child", "--variant", variant, "--model-dir", str(model_dir),
               "--r", str(args.r), "--batch", str(args.batch), "--seq", str(args.seq),
               "--aux-loss-coef", str(args.aux_loss_coef), "--lr", str(args.lr), "--mem-steps", str(args.mem_steps)]
    done = subprocess.run(command, check=False, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        sys.exit(f"the {variant} memory subprocess failed (exit {done.returncode}); see the log above")
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description="MoLE vs LoRA (same rank budget) training step: time and memory")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--r", type=int, default=8, help="rank of each MoLE expert; LoRA gets 4·r")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256, help="tokens per sequence")
    ap.add_argument("--steps", type=int, default=12, help="measured pairs (one step of each variant per pair)")
    ap.add_argument("--warmup", type=int, default=3, help="unmeasured steps of each variant first")
    ap.add_argument("--mem-steps", type=int, default=3, help="steps each memory subprocess runs")
    ap.add_argument("--aux-loss-coef", type=float, default=0.0,
                    help="MoLE load-balancing loss weight (the MoleSettings default, 0, keeps it off)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "mole.json")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if args.child:
        child(args)
        return

    import peft
    import torch
    import transformers

    device, dtype = device_and_dtype()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model_dir(args.preset, Path(tmp) / "model")
        print(f"MoLE (1 universal + {NUM_EXPERTS} experts, r={args.r} each) vs LoRA (r={(NUM_EXPERTS + 1) * args.r}), "
              f"all linear layers, {args.preset} model, batch {args.batch}×{args.seq} tokens, {device} {dtype}")
        print("memory: each variant alone in its own subprocess ...", flush=True)
        memory = {v: measure_memory(v, model_dir, args) for v in VARIANTS}

        print(f"timing: {args.warmup} warm-up steps each, then {args.steps} alternating pairs ...", flush=True)
        models = {v: make_variant(v, model_dir, args.r, args.aux_loss_coef, args.lr) for v in VARIANTS}
    params = {v: trainable_parameters(models[v][0]) for v in VARIANTS}
    input_ids = make_batch(models["mole"][0].config.vocab_size, args.batch, args.seq)
    load_before = os.getloadavg()[0]
    for _ in range(args.warmup):
        for v in VARIANTS:
            train_step(v, *models[v], input_ids, args.aux_loss_coef)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for i in range(args.steps):
        for v in (VARIANTS if i % 2 == 0 else VARIANTS[::-1]):
            times[v].append(train_step(v, *models[v], input_ids, args.aux_loss_coef))

    load_after = os.getloadavg()[0]
    median = {v: statistics.median(times[v]) for v in VARIANTS}
    ratio = median["mole"] / median["lora"]
    # Cross-checks that other load on the machine disturbs less: the two steps of a pair ran back to back.
    paired = statistics.median(m / lo for m, lo in zip(times["mole"], times["lora"]))
    fastest = min(times["mole"]) / min(times["lora"])
    peak_ratio = memory["mole"]["peak_mib"] / memory["lora"]["peak_mib"]
    training_ratio = memory["mole"]["training_mib"] / memory["lora"]["training_mib"]
    result = {
        "preset": args.preset, "model": PRESETS[args.preset], "device": str(device), "dtype": str(dtype),
        "mole": {"experts": f"1 universal + {NUM_EXPERTS} specific", "r": args.r, "alpha": 2 * args.r,
                 "routing": "dense, noisy gating", "aux_loss_coef": args.aux_loss_coef},
        "lora": {"r": (NUM_EXPERTS + 1) * args.r, "alpha": 2 * (NUM_EXPERTS + 1) * args.r},
        "batch": args.batch, "seq": args.seq, "warmup_steps": args.warmup, "pairs": args.steps,
        "step_s": times, "median_step_s": median, "step_time_ratio_mole_over_lora": ratio,
        "median_paired_step_time_ratio": paired, "fastest_step_time_ratio": fastest,
        "load_average_1min": {"before_timing": load_before, "after_timing": load_after},
        "target_ratio": TARGET, "target_met": ratio <= TARGET,
        "memory": memory, "peak_memory_ratio_mole_over_lora": peak_ratio,
        "training_memory_ratio_mole_over_lora": training_ratio,
        "trainable_parameters": params,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "transformers": transformers.__version__, "peft": peft.__version__,
                    "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                    "threads": torch.get_num_threads()},
    }

    print(f"\nstep time, median of {args.steps} (after {args.warmup} warm-up steps each):")
    for v in VARIANTS:
        print(f"  {v:<5} {median[v] * 1000:9.1f} ms   (min {min(times[v]) * 1000:.1f}, max {max(times[v]) * 1000:.1f})")
    print(f"  MoLE / LoRA (ratio of the medians): {ratio:.2f}x  -> target <= {TARGET}x "
          f"{'MET' if ratio <= TARGET else 'NOT MET'}")
    print(f"  cross-checks: median of the per-pair ratios {paired:.2f}x, fastest step / fastest step {fastest:.2f}x")
    busy = max(load_before, load_after) - 1.0  # this process itself keeps about one core's worth busy
    if device.type == "cpu" and busy > 0.5 * (os.cpu_count() or 1):
        print(f"  note: 1-min load average {load_before:.1f} -> {load_after:.1f} on {os.cpu_count()} cores: other "
              "processes competed for the CPU, so single steps vary; trust the cross-checks where they differ")
    if args.steps < 5:
        print(f"  (only {args.steps} pairs: too few for a reliable median; use --steps 5 or more)")
    unit = "max_memory_allocated" if device.type == "cuda" else "peak RSS"
    print(f"peak memory ({unit}, each variant alone in a fresh process, {args.mem_steps} steps):")
    for v in VARIANTS:
        m = memory[v]
        print(f"  {v:<5} peak {m['peak_mib']:9.1f} MiB   before first step {m['before_first_step_mib']:9.1f} MiB   "
              f"training {m['training_mib']:8.1f} MiB")
    print(f"  MoLE / LoRA: peak {peak_ratio:.3f}x, training part {training_ratio:.3f}x")
    print("trainable parameters:")
    for v in VARIANTS:
        p = params[v]
        extra = f"   (router + noise {p['router_and_noise']:,})" if p["router_and_noise"] else ""
        print(f"  {v:<5} {p['trainable']:>12,}{extra}")
    experts = params["mole"]["trainable"] - params["mole"]["router_and_noise"]
    print(f"  MoLE experts alone {experts:,} vs LoRA {params['lora']['trainable']:,}"
          f" ({'equal' if experts == params['lora']['trainable'] else 'DIFFERENT'}); MoLE / LoRA overall "
          f"{params['mole']['trainable'] / params['lora']['trainable']:.4f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
