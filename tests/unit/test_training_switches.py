"""Speed switches rlmed resolves itself before handing the trainer its config (rlmed.training)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from rlmed.models.loading import load_causal_lm, resolve_attention
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


# --- attention kernels (args.attn_implementation) ----------------------------------------------------------------
@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available(),
                    reason="flash-attn and CUDA exist here")
def test_attention_auto_leaves_the_choice_to_transformers_without_flash_attn():
    assert resolve_attention("auto") is None


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash-attn is installed here")
def test_flash_attention_without_the_package_names_the_argument_and_the_fix():
    with pytest.raises(ValueError) as info:
        resolve_attention("flash_attention_2")
    assert "args.attn_implementation" in str(info.value) and "flash-attn" in str(info.value)


def test_an_explicit_attention_reaches_the_loaded_model(tiny_model):
    assert load_causal_lm(str(tiny_model), attn_implementation="eager").config._attn_implementation == "eager"
    assert load_causal_lm(str(tiny_model)).config._attn_implementation == "sdpa"  # auto on CPU: transformers' pick


def test_packing_under_sdpa_is_warned_about_and_padded_batches_are_not(caplog):
    import logging
    from types import SimpleNamespace

    from rlmed.stages.sft import warn_dense_packing

    ctx = SimpleNamespace(log=logging.getLogger("rlmed.test.sft"))
    model = SimpleNamespace(config=SimpleNamespace(_attn_implementation="sdpa"))
    with caplog.at_level(logging.WARNING, logger="rlmed.test.sft"):
        warn_dense_packing(ctx, SimpleNamespace(packing=False), model)
        assert not caplog.records
        warn_dense_packing(ctx, SimpleNamespace(packing=True), model)
    (record,) = caplog.records
    assert "sdpa" in record.getMessage() and "flash_attention_2" in record.getMessage()
    caplog.clear()
    flash = SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2"))
    with caplog.at_level(logging.WARNING, logger="rlmed.test.sft"):
        warn_dense_packing(ctx, SimpleNamespace(packing=True), flash)
    assert not caplog.records
