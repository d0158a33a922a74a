"""Shared fixtures: a tiny model built once per session, offline settings, recipe helpers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"

# No hub here: fail fast instead of waiting on network time-outs; keep tests off the user's caches.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    os.environ["RLMED_CACHE_DIR"] = str(tmp_path_factory.mktemp("rlmed_cache"))


@pytest.fixture(scope="session")
def sample_texts() -> list[str]:
    from rlmed.data.formats import load_texts

    texts = []
    for name in ("corpus.jsonl", "instructions.jsonl", "dialogues.jsonl"):
        texts += load_texts(SAMPLE / name)
    return sorted(texts)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, sample_texts) -> Path:
    """A tiny Qwen2-shape model folder with a BPE tokenizer trained on the sample data."""
    from rlmed.models.tiny import TinySpec, build_tiny

    return build_tiny(TinySpec(vocab_size=2048), sample_texts, tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def read_metrics(stage_dir: Path) -> list[dict]:
    lines = (stage_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]
