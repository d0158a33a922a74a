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


class SaveFinalLogits(TrainerCallback):
    """At the end of training, the model's logits on a fixed input, saved by rank 0 to `path` (.pt).

    Under ZeRO-3 the parameters are partitioned, so they are gathered first (a collective: every rank runs it).
    """

    def __init__(self, path: str, length: int = 16):
        self.path = path
        self.length = length

    def on_train_end(self, args, state, control, model=None, **kwargs):
        import contextlib

        import torch
        from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

        gather = contextlib.nullcontext()
        if is_deepspeed_zero3_enabled():
            import deepspeed

            gather = deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
        with gather, torch.no_grad():
            was_training = model.training
            model.eval()
            ids = torch.arange(3, 3 + self.length).unsqueeze(0)
            logits = model(input_ids=ids).logits.float().cpu()
            model.train(was_training)
        if state.is_world_process_zero:
            torch.save(logits, self.path)


class RaiseOnRank(TrainerCallback):
    """Raises on one rank at one step: a rank that fails mid-stage while the others go on."""

    def __init__(self, rank: int, step: int):
        self.rank = rank
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if int(os.environ.get("RANK", "0")) == self.rank and state.global_step >= self.step:
            raise RuntimeError(f"deliberate failure on rank {self.rank} at step {state.global_step}")
