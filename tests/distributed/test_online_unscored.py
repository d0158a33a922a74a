"""grpo (and so rloo: both run through rlmed.stages.online_common) on 2 CPU ranks counts unscored rewards over
both ranks.

The reward source leaves every sample generated on rank 1 unscored and scores rank 0's, so rank 0 alone sees
none: the manifest must report rank 1's as well, and a max_failed_fraction that the run-wide share exceeds
(rank 0's does not) must stop the stage on every rank, rank 0 included, with the run-wide counts.
"""

from __future__ import annotations

from tests.conftest import SAMPLE
from tests.distributed.conftest import launch, manifest, recipe_file, tail

PER_RANK = 4  # completions per rank per step (one step)


def grpo_stage(stage_id: str, model: str, max_failed_fraction: float) -> dict:
    return {"id": stage_id, "kind": "grpo",
            "inputs": {"model": model, "prompts": str(SAMPLE / "doctor_dialogues.jsonl")},
            "args": {"max_prompts": 8, "max_failed_fraction": max_failed_fraction},
            "reward": {"_component_": "tests.helpers.rewards.UnscoredOnRank", "rank": 1},
            "trainer": {"max_steps": 1, "per_device_train_batch_size": PER_RANK, "num_generations": 4,
                        "max_completion_length": 8, "learning_rate": 1e-6, "save_steps": 100}}


def test_unscored_rewards_are_summed_over_ranks_and_the_gate_stops_every_rank(tmp_path, tiny_model):
    stages = [grpo_stage("counted", str(tiny_model), max_failed_fraction=1.0),
              grpo_stage("gated", str(tiny_model), max_failed_fraction=0.3)]
    result = launch(recipe_file(tmp_path, "unscored", stages), ranks=2, timeout=400)
    output, shown = result.stdout + result.stderr, tail(result)

    m = manifest(tmp_path / "unscored" / "counted")
    assert m["world_size"] == 2
    assert (m["metrics"]["rewards_unscored"], m["metrics"]["rewards_scored"]) == (PER_RANK, PER_RANK), shown

    assert result.returncode != 0, shown
    assert not (tmp_path / "unscored" / "gated" / "manifest.json").exists()
    # Rank 0 scored all of its own samples: it stops only because it sees rank 1's.
    for rank in (0, 1):
        assert (f"stage 'gated' (grpo) failed on rank {rank}: RuntimeError: {PER_RANK} of {2 * PER_RANK} rewards "
                "could not be scored over 2 rank(s)") in output, shown
