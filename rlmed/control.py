"""Control runs: the same recipe with the learning signal destroyed, to tell a learned gain from noise.

`rlmed run RECIPE --control shuffled-rewards` wraps the `reward:` block of every stage that learns from or
selects by its reward (ai_feedback, ppo, grpo, rloo, a user's stage) in `reward.control.Shuffled`, which
permutes the scores across the scored samples and so keeps their distribution but not their link to the
samples (methods.md §10). The evaluate stage's reward is the measure, not a signal, and stays as it is. Gates
that stop a run when a stage did not learn (a reward model's `min_accuracy`) are lifted: a control that learns
nothing is the expected outcome, not a failure. The run
goes to `<run_dir>-shuffled-rewards` (unless --run-dir says otherwise), under the recipe name with the same
suffix, so it never mixes with the real run; stages before the first reward are unchanged, so their folders
may be copied over from the real run and are then skipped as up to date.
"""

from __future__ import annotations

import copy
import zlib
from typing import Any

SHUFFLED = "reward.control.Shuffled"
MEASURING_KINDS = {"evaluate"}  # stages whose reward is a measurement, never a training signal
# Gates that stop a run when a stage did not learn: a control is expected not to learn, so they are lifted.
LEARNING_GATES = {"reward_model": ("min_accuracy",)}


def shuffle_rewards(raw: dict[str, Any]) -> dict[str, Any]:
    """A copy of a raw recipe mapping with every training reward block wrapped in Shuffled (seeded per stage)."""
    out = copy.deepcopy(raw)
    for stage in out.get("stages") or []:
        if not isinstance(stage, dict) or stage.get("kind") in MEASURING_KINDS:
            continue
        args = stage.get("args")
        for gate in LEARNING_GATES.get(stage.get("kind"), ()):
            if isinstance(args, dict):
                args.pop(gate, None)
        reward = stage.get("reward")
        if isinstance(reward, dict):
            seed = zlib.crc32(str(stage.get("id")).encode("utf-8"))
            stage["reward"] = {"_component_": SHUFFLED, "source": reward, "seed": seed}
    return out


CONTROLS = {"shuffled-rewards": shuffle_rewards}


def apply_control(raw: Any, control: str) -> Any:
    """The raw recipe with `control` applied: rewards changed, and name and run_dir suffixed with its name."""
    if control not in CONTROLS:
        raise ValueError(f"unknown control '{control}'; choose one of {', '.join(CONTROLS)}")
    if not isinstance(raw, dict):
        return raw  # parse_recipe reports the real problem
    out = CONTROLS[control](raw)
    name = out.get("name") if isinstance(out.get("name"), str) else None
    if name:
        out["name"] = f"{name}-{control}"
        out["run_dir"] = f"{out.get('run_dir') or f'runs/{name}'}-{control}"
    return out
