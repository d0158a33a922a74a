"""Stage `grpo`: critic-free RL with trl's GRPOTrainer (group-relative advantages) and any rlmed reward source.

Everything but the trainer is shared with `rloo`: see rlmed.stages.online_common (reward adapter, None handling,
held-out measurement before and after).
"""

from __future__ import annotations

from rlmed.stages.online_common import make_spec

SPEC = make_spec("grpo", "trl.GRPOTrainer", "trl.GRPOConfig", __doc__)
