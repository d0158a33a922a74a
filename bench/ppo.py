"""Where a PPO rollout's time goes: `python -m bench.ppo` (about a minute on 2 CPU cores).

Runs the real `ppo` stage through the runner (a recipe of tiny_model -> ppo, reward ReferenceSimilarity
against the doctor's reply) and splits each rollout's wall time into generation, scoring, experience and training,
as the stage logs them: experience = the no-grad forward passes for old log-probs, reference log-probs and
values plus GAE; training = the PPO epochs (forward, backward, optimizer steps). Figures:

- the share of rollout time spent in generation (and in scoring and training);
- generation throughput inside PPO (answer tokens/s) against a baseline measured in the same run: plain
  `model.generate` on batches of the same prompt set with the same sampling settings, outside any trainer.
  Below 1.0 is the cost of rlmed's rollout path (unwrapping, batching, padding) over the call it wraps.

`--preset 0.5b` builds a ~0.5B-parameter random-init Qwen2-shape model instead (24 layers, hidden 896) and
trains in bf16: meant for a GPU machine (see docs/benchmarks.md); on CPU it runs, slowly, in float32.
Writes bench/results/ppo.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from bench.presets import PRESETS, ROOT, SAMPLE


def recipe(run_dir: Path, preset: str, rollouts: int, batch: int, new_tokens: int) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "name": "bench_ppo", "run_dir": str(run_dir), "defaults": {"seed": 0},
        "stages": [
            {"id": "base", "kind": "tiny_model", "args": PRESETS[preset],
             "inputs": {"texts": [str(SAMPLE / "corpus.jsonl"), str(SAMPLE / "dialogues.jsonl")]}},
            {"id": "ppo", "kind": "ppo",
             "inputs": {"model": "$base.model", "prompts": str(SAMPLE / "doctor_dialogues.jsonl")},
             "args": {"num_rollouts": rollouts, "rollout_batch_size": batch, "generation_batch_size": batch,
                      "ppo_epochs": 2, "max_new_tokens": new_tokens, "save_every_rollouts": rollouts,
                      "dtype": "bfloat16" if cuda else "auto"},
             "reward": {"_component_": "reward.similarity.ReferenceSimilarity", "metric": "rouge_l",
                        "tokenizer": "jieba"},
             "trainer": {"learning_rate": 1e-5, "per_device_train_batch_size": batch // 2, "bf16": cuda}},
        ],
    }


def plain_generate_throughput(model_dir: Path, prompts: list[list[dict]], batch: int, new_tokens: int,
                              batches: int) -> float:
    """Answer tokens per second of plain transformers generation, over `batches` batches of the prompts
    (after one warm-up batch): the baseline."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from rlmed.data.chat import render_prompt
    from rlmed.rl.experience import response_mask

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    config = GenerationConfig(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=new_tokens,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    seconds, tokens = 0.0, 0
    for i in range(batches + 1):
        texts = [render_prompt(tokenizer, p) for p in prompts[i * batch:(i + 1) * batch]]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        torch.manual_seed(i)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**enc, generation_config=config)
        if device == "cuda":
            torch.cuda.synchronize()
        if i:  # the first batch warms up
            seconds += time.perf_counter() - start
            mask, _ = response_mask(out[:, enc["input_ids"].shape[1]:].cpu(), tokenizer.eos_token_id,
                                    tokenizer.pad_token_id)
            tokens += int(mask.sum())
    return tokens / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description="PPO rollout time split")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--rollouts", type=int, default=6)
    ap.add_argument("--batch", type=int, default=16, help="prompts per rollout")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ppo.json")
    args = ap.parse_args()
    import torch
    import yaml

    from rlmed.cli import main as rlmed_main
    from rlmed.data.sources import doctor_prompts, load_sources
    from rlmed.stages.base import DataSource

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        recipe_file = Path(tmp) / "recipe.yaml"
        recipe_file.write_text(yaml.safe_dump(recipe(run_dir, args.preset, args.rollouts, args.batch,
                                                     args.new_tokens), allow_unicode=True), encoding="utf-8")
        started = time.perf_counter()
        if rlmed_main(["run", str(recipe_file)]) != 0:
            sys.exit("the ppo run failed; see the log above")
        wall = time.perf_counter() - started
        rows = [json.loads(line) for line in (run_dir / "ppo" / "metrics.jsonl").open(encoding="utf-8")]
        rollouts = [r for r in rows if "reward_mean" in r][1:]  # the first rollout includes warm-up
        loaded = load_sources([DataSource(str(SAMPLE / "doctor_dialogues.jsonl"))], doctor_prompts, seed=0,
                              keep_order=True)
        prompts = [p.messages for row in loaded.items for p in row]
        baseline = plain_generate_throughput(run_dir / "base" / "model", prompts, args.batch, args.new_tokens, 4)

    parts = {k: sum(r[f"time_{k}"] for r in rollouts) / len(rollouts) for k in ("generation", "scoring", "experience", "training")}
    total = sum(parts.values())
    ppo_throughput = sum(r["response_length"] * args.batch for r in rollouts) / sum(r["time_generation"] for r in rollouts)
    result = {
        "preset": args.preset, "rollouts_measured": len(rollouts), "prompts_per_rollout": args.batch,
        "max_new_tokens": args.new_tokens, "mean_response_length": sum(r["response_length"] for r in rollouts) / len(rollouts),
        "seconds_per_rollout": parts, "fraction": {k: v / total for k, v in parts.items()},
        "generation_tokens_per_s": ppo_throughput, "plain_generate_tokens_per_s": baseline,
        "generation_throughput_vs_plain_generate": ppo_throughput / baseline,
        "stage_wall_seconds_including_model_build": wall,
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                    "threads": torch.get_num_threads()},
    }
    print(f"PPO rollout ({args.preset}, {args.batch} prompts, ≤{args.new_tokens} new tokens), mean of "
          f"{len(rollouts)} rollouts:")
    for name, seconds in parts.items():
        print(f"  {name:<10} {seconds:7.3f} s  {100 * seconds / total:5.1f}%")
    print(f"  generation share: {result['fraction']['generation']:.2f}")
    print(f"  generation throughput in PPO / plain generate (same settings): "
          f"{result['generation_throughput_vs_plain_generate']:.2f}x  ({ppo_throughput:.0f} vs {baseline:.0f} "
          "answer tokens/s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
