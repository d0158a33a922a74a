"""Speed switches rlmed resolves itself before handing the trainer its config (rlmed.training)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from rlmed.training import liger_available, liger_setting

needs_no_liger = pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is not None,
                                    reason="liger-kernel is installed here")


@needs_no_liger
def test_liger_auto_is_off_without_the_package():
    assert liger_available() is False
    assert liger_setting("auto", "sft") is False


@needs_no_liger
def test_liger_true_without_the_package_names_the_stage_key_and_the_fix():
    with pytest.raises(ValueError) as info:
        liger_setting(True, "sft")
    message = str(info.value)
    assert "stage sft" in message and "trainer.use_liger_kernel" in message
    assert "pip install liger-kernel" in message and "auto" in message


def test_liger_false_stays_false():
    assert liger_setting(False, "sft") is False


@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is None or not torch.cuda.is_available(),
                    reason="needs liger-kernel and CUDA")
def test_liger_auto_is_on_where_installed_and_usable():
    assert liger_setting("auto", "sft") is True
