"""Trainer callbacks used by tests through a recipe's `callbacks:` block, as a user would."""

from __future__ import annotations

import os
import signal

from transformers import TrainerCallback


class KillAfterCheckpoint(TrainerCallback):
    """SIGKILLs the process right after the checkpoint of `step` is saved: a crash nothing can clean up after.

    Armed only while the environment variable `arm_env` is set, so the same recipe (same config hash) can be
    run again to resume.
    """

    def __init__(self, step: int, arm_env: str = "RLMED_TEST_KILL"):
        self.step = step
        self.arm_env = arm_env

    def on_save(self, args, state, control, **kwargs):
        if os.environ.get(self.arm_env) and state.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)
