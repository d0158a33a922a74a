"""Trainer callbacks used by tests through a recipe's `callbacks:` block, as a user would."""

from __future__ import annotations

import os
import signal

from transformers import TrainerCallback


class KillAfterCheckpoint(TrainerCallback):
    """SIGKILLs the process right after the checkpoint of `step` is saved: a crash nothing can clean up after."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)
