"""The CPU shim for multi-rank DeepSpeed through accelerate: needed today, and this test says when it is not."""

from __future__ import annotations

import torch
from accelerate.state import PartialState
from accelerate.utils import DistributedType

from rlmed import dist


def test_accelerate_still_needs_the_shim(monkeypatch):
    """Fails once accelerate itself reports a multi-process backend for DeepSpeed ranks without CUDA:
    then delete rlmed.dist.apply_cpu_shim and its call."""
    assert not torch.cuda.is_available()
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    dist.apply_cpu_shim()
    original = getattr(PartialState._prepare_backend, "_original", PartialState._prepare_backend)
    backend, kind = original(object.__new__(PartialState), cpu=False)
    assert (backend, kind) == (None, DistributedType.NO), (
        "accelerate now handles DeepSpeed on CPU ranks by itself; remove rlmed.dist.apply_cpu_shim")


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
