"""Stage `rloo`: critic-free RL with trl's RLOOTrainer (REINFORCE with a leave-one-out baseline) and any rlmed
reward source.

Everything but the trainer is shared with `grpo`: see rlmed.rl.online (reward adapter, None handling, held-out
measurement before and after).
"""

from __future__ import annotations

from rlmed.rl.online import Args, make_run
from rlmed.stages.base import Input, StageSpec

SPEC = StageSpec(
    kind="rloo",
    args=Args,
    inputs={
        "model": Input("model", doc="the policy to improve (also the reference when trainer.beta > 0)"),
        "prompts": Input("data", many=True, doc="prompts, with the doctor's reply as reference when they have one"),
    },
    outputs={"model": "model", "merged": "merged"},
    optional_outputs=frozenset({"merged"}),
    run=make_run("trl.RLOOTrainer", "trl.RLOOConfig"),
    trainer_config="trl.RLOOConfig",
    reward="required",
    doc=__doc__,
)
