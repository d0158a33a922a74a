"""Launching recipes under the real `deepspeed` launcher with CPU ranks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

from tests.conftest import ROOT, SAMPLE, read_metrics, write_recipe

ZERO2 = str(ROOT / "ds_configs" / "zero2.json")
ZERO3 = str(ROOT / "ds_configs" / "zero3.json")
ZERO3_OFFLOAD = str(ROOT / "ds_configs" / "zero3_offload.json")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launcher_env() -> dict[str, str]:
    # One thread per rank: two ranks share two cores. PYTHONPATH so ranks import this checkout.
    return {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(ROOT)}


def launch(recipe: Path, ranks: int = 2, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    command = ["deepspeed", "--num_gpus", str(ranks), "--master_port", str(free_port()),
               str(ROOT / "rlmed" / "run.py"), str(recipe)]
    return subprocess.run(command, cwd=ROOT, env=env or launcher_env(), capture_output=True, text=True,
                          timeout=timeout)


def shm_left(result: subprocess.CompletedProcess) -> list[Path]:
    """The DeepSpeed shared-memory segments a launch left in /dev/shm (their names carry its master port)."""
    port = result.args[result.args.index("--master_port") + 1]
    return sorted(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"))


def recipe_file(tmp_path: Path, name: str, stages: list[dict], run_dir: Path | None = None) -> Path:
    recipe = {"name": name, "run_dir": str(run_dir or tmp_path / name), "defaults": {"seed": 3}, "stages": stages}
    return write_recipe(tmp_path / f"{name}.yaml", recipe)


def cpt_stage(model: Path, deepspeed: str, batch: int, steps: int = 4) -> dict:
    return {"id": "cpt", "kind": "pretrain",
            "inputs": {"model": str(model), "corpus": str(SAMPLE / "corpus.jsonl")},
            "args": {"max_length": 64, "num_documents": 300},
            "trainer": {"max_steps": steps, "per_device_train_batch_size": batch, "learning_rate": 2e-3,
                        "deepspeed": deepspeed, "save_steps": 100}}


def sft_stage(model: str, deepspeed: str, batch: int, stage_id: str = "sft", steps: int = 4, **extra) -> dict:
    return {"id": stage_id, "kind": "sft",
            "inputs": {"model": model, "data": str(SAMPLE / "dialogues.jsonl")},
            "args": {"num_samples": 96},
            "trainer": {"max_steps": steps, "per_device_train_batch_size": batch, "learning_rate": 2e-3,
                        "max_length": 256, "deepspeed": deepspeed, "save_steps": 100},
            **extra}


def losses(stage_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(stage_dir) if "loss" in r]


def manifest(stage_dir: Path) -> dict:
    return json.loads((stage_dir / "manifest.json").read_text(encoding="utf-8"))


def tail(result: subprocess.CompletedProcess) -> str:
    return (result.stdout + result.stderr)[-4000:]
