"""Checking and coercing recipe values against Python type hints.

One checker serves stage `args` (dataclasses), `trainer:` fields (trl/transformers config dataclasses) and
`_component_` arguments (constructor signatures), so every recipe value is judged by the same rules.

Why coercion at all: YAML 1.1 reads `1e-5` (no dot) as a string, and users write `learning_rate: 1e-5`
all the time. A string that parses as the number a field expects is taken as that number; anything else
that does not fit is a problem reported with what was expected.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union


class ConfigTypeError(ValueError):
    """A value does not fit its declared type; `expected` says what would have."""

    def __init__(self, expected: str, got: Any):
        self.expected = expected
        self.got = got
        super().__init__(f"expected {expected}, got {_describe(got)}")


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def type_name(tp: Any) -> str:
    """A short, readable name for a type hint (`int`, `float | None`, `'a' | 'b'`)."""
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple, dict):
        inner = ", ".join(type_name(a) for a in typing.get_args(tp) if a is not Ellipsis)
        return f"{origin.__name__}[{inner}]" if inner else origin.__name__
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return " | ".join(repr(m.value) for m in tp)
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any) -> Any:
    """Return `value` converted to fit `tp`, or raise ConfigTypeError.

    Unknown or unresolvable annotations accept anything: a user's component may annotate with types we cannot
    check, and refusing those would be worse than letting its constructor decide.
    """
    if tp is Any or tp is inspect.Parameter.empty or isinstance(tp, (str, typing.TypeVar)):
        return value
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        members = typing.get_args(tp)
        present = [m for m in members if m is not type(None)]
        if value is not None and len(present) == 1:  # `X | None`: X's own error says what is wrong
            return coerce(value, present[0])
        for member in members:  # exact fits first, so `float | str` keeps a str as a str
            if _fits_exactly(value, member):
                return value
        for member in members:
            try:
                return coerce(value, member)
            except ConfigTypeError:
                continue
        raise ConfigTypeError(type_name(tp), value)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigTypeError(f"one of {type_name(tp)}", value)
    if tp is type(None):
        if value is None:
            return None
        raise ConfigTypeError("null", value)
    if origin in (list, tuple) or tp in (list, tuple):
        return _coerce_list(value, tp, origin or tp)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigTypeError(type_name(tp), value)
        args = typing.get_args(tp)
        if len(args) == 2:
            return {coerce(k, args[0]): coerce(v, args[1]) for k, v in value.items()}
        return value
    if origin is not None:  # other generics (Callable, Mapping, ...): not checked
        return value
    return _coerce_plain(value, tp)


def _coerce_list(value: Any, tp: Any, container: Any) -> Any:
    if not isinstance(value, (list, tuple)):
        raise ConfigTypeError(type_name(tp), value)
    args = [a for a in typing.get_args(tp) if a is not Ellipsis]
    items = [coerce(v, args[0]) for v in value] if args else list(value)
    return tuple(items) if container is tuple else items


def _coerce_plain(value: Any, tp: Any) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigTypeError("bool (true or false)", value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        number = _parse_number(value)
        if number is not None and float(number).is_integer():
            return int(number)
        raise ConfigTypeError("int", value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        number = _parse_number(value)
        if number is not None:
            return float(number)
        raise ConfigTypeError("float", value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigTypeError("str", value)
    if tp in (Path, os.PathLike):
        if isinstance(value, (str, Path)):
            return value
        raise ConfigTypeError("path (str)", value)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise ConfigTypeError(f"one of {type_name(tp)}", value) from None
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _coerce_dataclass(value, tp)
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise ConfigTypeError(tp.__name__, value)
    return value


def _coerce_dataclass(value: Any, tp: type) -> Any:
    """A mapping becomes the dataclass (a nested block such as `args.lora`), each field checked in turn."""
    if isinstance(value, tp):
        return value
    if not isinstance(value, dict):
        raise ConfigTypeError(f"a mapping of {tp.__name__} fields", value)
    types = field_types(tp)
    unknown = [k for k in value if k not in types]
    if unknown:
        raise ConfigTypeError(f"fields of {tp.__name__} ({', '.join(types)}); unknown: {', '.join(map(str, unknown))}",
                              value)
    missing = [k for k in required_fields(tp) if k not in value]
    if missing:
        raise ConfigTypeError(f"{tp.__name__} with {', '.join(missing)}", value)
    converted = {}
    for key, item in value.items():
        try:
            converted[key] = coerce(item, types[key])
        except ConfigTypeError as exc:
            raise ConfigTypeError(f"{key}: {exc.expected}", exc.got) from None
    try:
        return tp(**converted)
    except (TypeError, ValueError) as exc:
        raise ConfigTypeError(f"a valid {tp.__name__} ({exc})", value) from None


def _parse_number(value: Any) -> float | int | None:
    """A number written as a string (`"1e-5"`, `"3"`); None when it is not one."""
    if not isinstance(value, str):
        return None
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return None


def _fits_exactly(value: Any, tp: Any) -> bool:
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, float)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp in (bool, str):
        return isinstance(value, tp)
    return False


def field_types(cls: type) -> dict[str, Any]:
    """Resolved type hints of a dataclass (string annotations evaluated), {} when they cannot be resolved."""
    try:
        return typing.get_type_hints(cls)
    except Exception:  # a third-party class with unresolvable forward references: check names only
        return {f.name: Any for f in dataclasses.fields(cls)}


def required_fields(cls: type) -> list[str]:
    """Dataclass fields with neither a default nor a default factory."""
    return [
        f.name
        for f in dataclasses.fields(cls)
        if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
