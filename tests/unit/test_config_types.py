"""Type checking and coercion of recipe values."""

from __future__ import annotations

import re
from typing import Literal

import pytest

from rlmed.config_types import ConfigTypeError, coerce


@pytest.mark.parametrize("value, tp, expected", [
    ("1e-5", float, 1e-5),
    ("3", int, 3),
    ("1e3", int, 1000),
    (2, float, 2.0),
    (None, int | None, None),
    ("x", float | str, "x"),          # a str field keeps a str
    (["1", 2], list[int], [1, 2]),
    ({"a": "0.5"}, dict[str, float], {"a": 0.5}),
    ("b", Literal["a", "b"], "b"),
])
def test_values_that_fit(value, tp, expected):
    assert coerce(value, tp) == expected
    assert type(coerce(value, tp)) is type(expected)


@pytest.mark.parametrize("value, tp, message", [
    ("abc", float, "expected float, got str 'abc'"),
    (1.5, int, "expected int, got float 1.5"),
    (True, int, "expected int, got bool True"),
    ("yes", bool, "expected bool (true or false)"),
    ("c", Literal["a", "b"], "expected one of 'a' | 'b'"),
    ([1], dict, "expected dict"),
    ("1", list[int], "expected list[int]"),
])
def test_values_that_do_not_fit(value, tp, message):
    with pytest.raises(ConfigTypeError, match=re.escape(message)):
        coerce(value, tp)
