"""The CPU shim for multi-rank DeepSpeed through accelerate: needed today, and this test says when it is not."""

from __future__ import annotations

import torch
from accelerate.state import PartialState
from accelerate.utils import DistributedType

import pytest

from rlmed import dist

# The shim exists for DeepSpeed ranks on machines without CUDA; where CUDA exists it must stay out of the way.
cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="the shim's case is a machine without CUDA")


@cpu_only
def test_accelerate_still_needs_the_shim(monkeypatch):
    """Fails once accelerate itself reports a multi-process backend for DeepSpeed ranks without CUDA:
    then delete rlmed.dist.apply_cpu_shim and its call."""
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    dist.apply_cpu_shim()
    original = getattr(PartialState._prepare_backend, "_original", PartialState._prepare_backend)
    backend, kind = original(object.__new__(PartialState), cpu=False)
    assert (backend, kind) == (None, DistributedType.NO), (
        "accelerate now handles DeepSpeed on CPU ranks by itself; remove rlmed.dist.apply_cpu_shim")


@cpu_only
def test_shim_reports_gloo_multi_cpu_only_in_its_case(monkeypatch):
    dist.apply_cpu_shim()
    state = object.__new__(PartialState)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert PartialState._prepare_backend(state, cpu=False) == ("gloo", DistributedType.MULTI_CPU)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "false")  # not DeepSpeed: accelerate's own answer
    assert PartialState._prepare_backend(state, cpu=False)[1] == DistributedType.NO
    assert dist.apply_cpu_shim() is True  # idempotent: not wrapped twice
    assert not getattr(PartialState._prepare_backend._original, "_rlmed_shim", False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_shim_is_never_applied_where_cuda_exists():
    before = PartialState._prepare_backend
    assert dist.apply_cpu_shim() is False
    assert PartialState._prepare_backend is before and not getattr(before, "_rlmed_shim", False)
