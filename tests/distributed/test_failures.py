"""A rank that fails mid-stage fails the whole launch, quickly, showing that rank's error, leaving no manifest."""

from __future__ import annotations

import time

from tests.distributed.conftest import ZERO3, launch, recipe_file, sft_stage, tail

BOUND_S = 180  # the launch must end within this (the launcher kills the other ranks when one exits non-zero)


def test_rank_that_raises_mid_stage_fails_the_launch_without_a_manifest(tmp_path, tiny_model):
    raise_on_rank_1 = [{"_component_": "tests.helpers.callbacks.RaiseOnRank", "rank": 1, "step": 2}]
    stages = [sft_stage(str(tiny_model), ZERO3, 4, steps=6, callbacks=raise_on_rank_1)]
    started = time.monotonic()
    result = launch(recipe_file(tmp_path, "fails", stages), ranks=2, timeout=BOUND_S + 60)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert elapsed < BOUND_S
    output = tail(result)
    assert "stage 'sft' (sft) failed on rank 1" in output and "deliberate failure on rank 1 at step 2" in output
    assert not (tmp_path / "fails" / "sft" / "manifest.json").exists()
