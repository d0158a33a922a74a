"""The terminal shows rlmed's progress and other libraries' warnings; deprecation notices about the libraries'
own calls and their INFO chatter go to the stage logs only."""

from __future__ import annotations

import logging

from rlmed.cli import _Terminal


def record(name: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def test_terminal_keeps_rlmed_and_warnings_and_drops_library_chatter_and_deprecations():
    keep = _Terminal().filter
    assert keep(record("rlmed.runner", logging.INFO, "stage sft (sft) done in 3.2s"))
    assert keep(record("rlmed.stage.sft", logging.DEBUG, "detail"))
    assert keep(record("trl.trainer", logging.WARNING, "padding-free training needs flash attention"))
    assert keep(record("py.warnings", logging.WARNING, "x.py:3: UserWarning: the tokenizer has no pad token"))
    assert not keep(record("transformers.modeling_utils", logging.INFO, "loading weights"))
    assert not keep(record("py.warnings", logging.WARNING,
                           "m.py:3303: FutureWarning: `is_gradient_checkpointing` is deprecated"))
    assert not keep(record("py.warnings", logging.WARNING, "m.py:1: DeprecationWarning: old call"))
