"""bench.gpu on CPU: the FLOPs count, the parameter split, padding-free packing, and main() end to end."""

from __future__ import annotations

import json

import pytest
import torch

from bench import gpu

CPU = torch.device("cpu")


def test_flops_per_token_by_hand():
    # tiny: L=2, hidden 128, H=4 heads of Q=32, 2 KV heads (k/v width 64), intermediate 384, vocab 4096
    per_layer = ((128 * 128 + 128)        # q_proj + bias
                 + 2 * (128 * 64 + 64)    # k_proj, v_proj + biases
                 + 128 * 128              # o_proj (no bias)
                 + 3 * 128 * 384          # gate, up, down
                 + 2 * 128)               # two RMSNorms
    n = 2 * per_layer + 128               # + final norm
    assert n == 394_368
    assert gpu.flops_per_token(n, 2, 4, 32, 256) == 6 * 394_368 + 12 * 2 * 4 * 32 * 256 == 3_152_640
    model = gpu.build_model(gpu.make_config("tiny"), "meta", torch.float32)
    assert gpu.non_embedding_parameters(model) == n


@pytest.mark.parametrize("tied", [True, False])
def test_non_embedding_count_excludes_embeddings(tied):
    model = gpu.build_model(gpu.make_config("tiny", tie_word_embeddings=tied), "meta", torch.float32)
    counts = gpu.parameter_counts(model)
    vocab_by_hidden = 4096 * 128
    assert counts["embedding"] == vocab_by_hidden
    assert counts["lm_head_untied"] == (0 if tied else vocab_by_hidden)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["non_embedding"] == 394_368
    assert counts["total"] == 394_368 + vocab_by_hidden * (1 if tied else 2)


def test_peak_from_device_name():
    assert gpu.peak_flops_for("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu.peak_flops_for("NVIDIA H200") == 989e12
    assert gpu.peak_flops_for("NVIDIA H100 PCIe") == 756e12
    assert gpu.peak_flops_for("Some Other GPU") is None


def test_packed_rows_restart_positions_and_have_no_padding():
    batches = gpu.sft_batches(2, rows=2, seq=256, vocab=4096, doc_mean=60)
    for batch in batches:
        pos, labels = batch["position_ids"], batch["labels"]
        assert pos.shape == batch["input_ids"].shape == (2, 256)
        assert sum(batch["segments"]) == 2 * 256  # every token belongs to a document: no padding
        starts = pos == 0
        assert starts.sum() >= 4  # mean 60 tokens: several documents per row
        # between document starts, positions count up by one
        steps = pos[:, 1:] - pos[:, :-1]
        assert bool(((steps == 1) | starts[:, 1:]).all())
        assert bool((labels[starts] == -100).all()) and bool((labels[~starts] >= 0).all())


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padding_free_packing_isolates_documents(attn):
    """position_ids restarting at a document boundary and no attention_mask: transformers must build a
    block-diagonal causal mask, so the second document's logits equal those of that document run alone."""
    model = gpu.build_model(gpu.make_config("tiny", attn), CPU, torch.float32).eval()
    g = torch.Generator().manual_seed(7)
    first, second = 50, 30
    ids = torch.randint(0, 4096, (1, first + second), generator=g)
    position_ids = torch.cat([torch.arange(first), torch.arange(second)]).unsqueeze(0)
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=position_ids, use_cache=False).logits[0, first:]
        alone = model(input_ids=ids[:, first:], position_ids=torch.arange(second).unsqueeze(0),
                      use_cache=False).logits[0]
        unisolated = model(input_ids=ids, position_ids=position_ids, attention_mask=torch.ones_like(ids),
                           use_cache=False).logits[0, first:]
    torch.testing.assert_close(packed, alone, atol=1e-4, rtol=1e-4)
    assert (unisolated - alone).abs().max() > 1e-2  # the check can tell: seeing document 1 changes the logits
    check = gpu.packing_check(attn, CPU, torch.float32)
    assert check["isolated"], check


def test_cpu_smoke_run_writes_figures(tmp_path):
    out = tmp_path / "gpu.json"
    code = gpu.main(["--device", "cpu", "--preset", "tiny", "--seq", "128", "--rows", "1", "--steps", "2",
                     "--warmup", "1", "--batches", "2", "--dpo-pairs", "2", "--prompt-mean", "32",
                     "--answer-mean", "32", "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["status"] == "measured" and result["device"] == "cpu"
    assert result["packing_check"]["isolated"]
    tiny = result["presets"]["tiny"]
    assert tiny["sft"]["tokens_per_s"] > 0
    assert tiny["sft"]["mfu"]["status"] == "not computed"
    assert tiny["dpo"]["on_the_fly"]["tokens_per_s"] > 0
    assert tiny["dpo"]["precomputed"]["tokens_per_s"] > 0
    assert tiny["dpo"]["step_time_ratio_precomputed_over_on_the_fly"] > 0
    assert len(tiny["sft"]["step_s"]) == 2 and len(tiny["dpo"]["precomputed"]["step_s"]) == 2
    assert tiny["flops_per_token"]["full_T"] == gpu.flops_per_token(394_368, 2, 4, 32, 128)
    for key in ("torch", "transformers", "cuda", "device"):
        assert key in result["machine"]


def test_without_cuda_nothing_is_measured(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu.json"
    assert gpu.main(["--out", str(out)]) == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["status"] == "not measured"
    assert "CUDA" in result["reason"]
