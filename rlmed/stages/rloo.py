"""Stage `rloo`: critic-free RL with trl's RLOOTrainer (REINFORCE with a leave-one-out baseline) and any rlmed
reward source.

Everything but the trainer is shared with `grpo`: see rlmed.stages.online_common (reward adapter, None handling,
held-out measurement before and after).
"""

from __future__ import annotations

from rlmed.stages.online_common import make_spec

SPEC = make_spec("rloo", "trl.RLOOTrainer", "trl.RLOOConfig", __doc__)
