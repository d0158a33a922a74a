"""A stage's args refuse a bad value by naming the check and the value received, so a recipe's author sees what
rlmed read (a YAML typo, a value from another key) and not only the rule."""

from __future__ import annotations

import re

import pytest

from rlmed.models.tiny import TinySpec
from rlmed.stages import ai_feedback, evaluate, mole, reward_model


@pytest.mark.parametrize("args_class, values, message", [
    (ai_feedback.Args, {"samples_per_prompt": 1}, "samples_per_prompt must be at least 2 to form pairs, got 1"),
    (ai_feedback.Args, {"max_failed_fraction": 1.5}, "max_failed_fraction must be within 0..1, got 1.5"),
    (evaluate.Args, {"samples_per_prompt": 4, "sample_temperature": 0.0},
     "k > 1 samples need sample_temperature > 0, got samples_per_prompt=4, sample_temperature=0.0"),
    (evaluate.Args, {"batch_size": 0}, "got max_new_tokens=128, batch_size=0, few_shot=0"),
    (evaluate.Args, {"contamination_threshold": 0.0}, "contamination_threshold must be within (0, 1], got 0.0"),
    (evaluate.Args, {"choice_template": "meds_ins"}, "needs few_shot >= 1 (its cases are the solved examples), "
                                                     "got few_shot=0"),
    (mole.Args, {"routing_every": -1}, "routing_every must be >= 0 and routing_rows_per_task >= 1, got "
                                       "routing_every=-1, routing_rows_per_task=16"),
    (reward_model.Args, {"min_accuracy": 0.6, "validation_fraction": 0.0},
     "min_accuracy needs held-out pairs: set validation_fraction above 0, got min_accuracy=0.6, "
     "validation_fraction=0.0"),
    (TinySpec, {"num_heads": 3}, "got hidden_size=64, num_heads=3, num_kv_heads=2"),
    (TinySpec, {"vocab_size": 100}, "vocab_size must be at least 300 (256 bytes + special tokens + merges), got 100"),
])
def test_a_refused_value_is_named_in_the_error(args_class, values, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        args_class(**values)
