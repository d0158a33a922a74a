"""Every training stage under the real deepspeed launcher with 2 CPU ranks: ZeRO-3, ZeRO-2, ZeRO-3 offload."""

from __future__ import annotations

import subprocess
import sys

import torch

from rlmed.data.prepared import DataCache
from tests.conftest import ROOT, SAMPLE
from tests.distributed.conftest import (
    ZERO2, ZERO3, ZERO3_OFFLOAD, cpt_stage, launch, launcher_env, losses, manifest, recipe_file, sft_stage, shm_left,
    tail,
)

# 2 ranks x 4 rows and 1 rank x 8 rows see the same global batches, and the loss is normalised by the global
# token count, so only float summation order differs (measured: at most 1e-6 for both stages).
LOSS_TOLERANCE = {"cpt": 1e-4, "sft": 1e-4}  # absolute, in nats


def test_zero3_two_ranks_pretrain_then_sft_in_one_launch(tmp_path, tiny_model):
    logits_file = tmp_path / "final_logits.pt"
    save_logits = [{"_component_": "tests.helpers.callbacks.SaveFinalLogits", "path": str(logits_file)}]

    def stages(batch: int) -> list[dict]:
        return [cpt_stage(tiny_model, ZERO3, batch),
                sft_stage("$cpt.model", ZERO3, batch, callbacks=save_logits if batch == 4 else [])]

    two = launch(recipe_file(tmp_path, "two_ranks", stages(4)), ranks=2)
    assert two.returncode == 0, tail(two)
    assert shm_left(two) == []  # DeepSpeed's CPU allreduce segments are released (rlmed.dist)
    one = launch(recipe_file(tmp_path, "one_rank", stages(8)), ranks=1)
    assert one.returncode == 0, tail(one)
    assert shm_left(one) == []

    for stage in ("cpt", "sft"):
        assert manifest(tmp_path / "two_ranks" / stage)["world_size"] == 2
        a, b = losses(tmp_path / "two_ranks" / stage), losses(tmp_path / "one_rank" / stage)
        assert len(a) == len(b) == 4
        assert max(abs(x - y) for x, y in zip(a, b)) <= LOSS_TOLERANCE[stage], (stage, a, b)

    # The saved ZeRO-3 model is a full safetensors model: a fresh process reloads it with identical logits.
    model_dir = tmp_path / "two_ranks" / "sft" / "model"
    reload = (
        "import sys, torch; from transformers import AutoModelForCausalLM\n"
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()\n"
        "ids = torch.arange(3, 19).unsqueeze(0)\n"
        "with torch.no_grad(): torch.save(m(input_ids=ids).logits.float(), sys.argv[2])\n"
    )
    fresh = subprocess.run([sys.executable, "-c", reload, str(model_dir), str(tmp_path / "reloaded.pt")],
                           capture_output=True, text=True, timeout=120, env=launcher_env())
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert torch.equal(torch.load(logits_file), torch.load(tmp_path / "reloaded.pt"))


def test_zero2_then_zero3_offload_then_plain_ddp_sft_in_one_launch(tmp_path, tiny_model):
    """Also the state reset between stages: after ZeRO-3 offload, a stage without DeepSpeed loads and trains
    data-parallel (no weights partitioned by a stale ZeRO-3 config)."""
    # The third stage reads a changed copy of the data: its rows must be prepared anew, not taken from the cache.
    changed = tmp_path / "dialogues_changed.jsonl"
    lines = (SAMPLE / "dialogues.jsonl").read_text(encoding="utf-8").splitlines()
    changed.write_text("\n".join(lines[1:] + lines[:1]) + "\n", encoding="utf-8")
    plain = sft_stage("$sft_offload.model", "", 4, stage_id="sft_plain")
    plain["inputs"]["data"] = str(changed)
    del plain["trainer"]["deepspeed"]
    stages = [sft_stage(str(tiny_model), ZERO2, 4, stage_id="sft_zero2"),
              sft_stage("$sft_zero2.model", ZERO3_OFFLOAD, 4, stage_id="sft_offload"), plain]
    result = launch(recipe_file(tmp_path, "zero2_offload", stages), ranks=2)
    assert result.returncode == 0, tail(result)
    for stage in ("sft_zero2", "sft_offload", "sft_plain"):
        m = manifest(tmp_path / "zero2_offload" / stage)
        assert m["world_size"] == 2 and m["metrics"]["global_step"] == 4
        assert (tmp_path / "zero2_offload" / stage / "model" / "model.safetensors").exists()
    # Data-parallel means 4 steps x 2 ranks x 4 rows = 32 rows of the epoch; two lone ranks would cover 16.
    for stage in ("sft_zero2", "sft_offload", "sft_plain"):
        metrics = manifest(tmp_path / "zero2_offload" / stage)["metrics"]
        assert abs(metrics["epoch"] - 32 / metrics["train_dialogues"]) < 0.02, (stage, metrics["epoch"])

    # Data prepared once per node: for each cache entry, one rank prepared it and the other waited and reused it
    # (from the cache's own records); the next stages reuse it on both ranks; the changed file got new entries.
    events = DataCache(tmp_path / "zero2_offload" / ".rlmed" / "data").events()
    by_entry: dict[str, list[tuple[str, int]]] = {}
    for event in events:
        by_entry.setdefault(event["entry"], []).append((event["action"], event["rank"]))
    rows = [name for name in by_entry if name.startswith("rows-")]
    assert len(rows) == 2, by_entry  # the sample file, and its changed copy
    for name, uses in by_entry.items():
        prepared = [rank for action, rank in uses if action == "prepared"]
        assert len(prepared) == 1, (name, uses)
        assert {rank for _, rank in uses} == {0, 1}, (name, uses)
    first_rows = min(rows, key=lambda name: next(i for i, e in enumerate(events) if e["entry"] == name))
    assert [a for a, _ in by_entry[first_rows]].count("reused") == 3  # the other rank, then both ranks of stage 2
