"""Model shapes the benchmarks build (rlmed.models.tiny.TinySpec args): tiny.yaml's, and a ~0.5B Qwen2-shape
one for GPU machines (24 layers, hidden 896; a 4096-token vocabulary, random init)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
PRESETS = {
    "tiny": {"vocab_size": 4096, "hidden_size": 128, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
             "intermediate_size": 384},
    "0.5b": {"vocab_size": 4096, "hidden_size": 896, "num_layers": 24, "num_heads": 14, "num_kv_heads": 2,
             "intermediate_size": 4864},
}
