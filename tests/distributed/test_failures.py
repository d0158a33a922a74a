"""A rank that fails mid-stage fails the whole launch, showing that rank's error, leaving no manifest."""

from __future__ import annotations

from tests.distributed.conftest import ZERO3, launch, recipe_file, sft_stage, shm_left, tail


def test_rank_that_raises_mid_stage_fails_the_launch_without_a_manifest(tmp_path, tiny_model):
    raise_on_rank_1 = [{"_component_": "tests.helpers.callbacks.RaiseOnRank", "rank": 1, "step": 2}]
    stages = [sft_stage(str(tiny_model), ZERO3, 4, steps=6, callbacks=raise_on_rank_1)]
    # Unless the launcher ends rank 0 when rank 1 exits, rank 0 waits in ZeRO-3's next collective for the process
    # group's timeout (30 min, rlmed.dist): `launch`'s 300 s timeout, a hang guard, turns that into a failure.
    result = launch(recipe_file(tmp_path, "fails", stages), ranks=2)
    assert result.returncode != 0
    output = tail(result)
    assert "stage 'sft' (sft) failed on rank 1" in output and "deliberate failure on rank 1 at step 2" in output
    assert not (tmp_path / "fails" / "sft" / "manifest.json").exists()
    # Rank 0 was ended by the launcher, not by its own exit path: DeepSpeed's 66 MB segments are still not left.
    assert shm_left(result) == []
