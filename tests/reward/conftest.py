"""Fixtures for the judge client tests: a scriptable local OpenAI-compatible server, fresh per test."""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.reward.server import JudgeServer


@pytest.fixture
def judge_server() -> Iterator[JudgeServer]:
    """A running server on 127.0.0.1 (`.base_url`, `.script(...)`, `.received`, `.count`); stopped afterwards."""
    with JudgeServer() as server:
        yield server
