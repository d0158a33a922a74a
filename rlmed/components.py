"""`_component_: package.module.Class` objects: checked at recipe load, built when a stage runs.

A recipe names any importable class or function by dotted path and passes it keyword arguments, e.g.
`{_component_: reward.judge.LLMJudge, model: gpt-4o}`. `check_component` imports the target and binds the
arguments to its signature without calling it, so a typo in a path or an argument name is found before any
model loads; `build_component` calls it. A user's own class works the same way, with no change to rlmed.
"""

from __future__ import annotations

import importlib
import inspect
import typing
from typing import Any, Callable

from rlmed.config_types import ConfigTypeError, coerce

KEY = "_component_"


class ComponentError(ValueError):
    """A component spec cannot be imported, or its arguments do not fit its signature."""


def is_component(value: Any) -> bool:
    return isinstance(value, dict) and KEY in value


def import_object(path: str) -> Any:
    """Import `package.module.Name` (the longest importable module prefix, then attributes)."""
    if not isinstance(path, str) or "." not in path.strip("."):
        raise ComponentError(f"'{path}' is not a dotted path like package.module.Class")
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # Only "this very module is missing" means try a shorter prefix; a missing import *inside* the
            # user's module is their bug and must surface as such.
            if exc.name and not module_name.startswith(exc.name):
                raise ComponentError(f"importing '{module_name}' failed: {exc}") from exc
            continue
        except Exception as exc:  # the module exists but fails to import
            raise ComponentError(f"importing '{module_name}' failed: {type(exc).__name__}: {exc}") from exc
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                raise ComponentError(f"'{module_name}' has no attribute '{attr}' (from '{path}')")
            obj = getattr(obj, attr)
        return obj
    raise ComponentError(f"no module found for '{path}'; is the package installed and the path spelled right?")


def _signature(target: Callable) -> inspect.Signature | None:
    try:
        return inspect.signature(target)
    except (TypeError, ValueError):  # builtins without signatures: let the call decide
        return None


def check_arguments(target: Callable, kwargs: dict[str, Any], skip_types: Callable[[Any], bool]) -> list[str]:
    """Problems binding `kwargs` to `target`'s signature: unknown names, missing required ones, wrong types.

    `skip_types(value)` says a value is not literal yet (a `$stage.output` reference, a nested component) so
    its type is checked later, when it is resolved.
    """
    sig = _signature(target)
    if sig is None:
        return []
    problems = []
    params = sig.parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for name in kwargs:
        if name not in params and not takes_any:
            accepted = ", ".join(n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL)
            problems.append(f"{name}: unknown argument (accepted: {accepted or 'none'})")
    for name, param in params.items():
        if param.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
            continue
        if param.default is inspect.Parameter.empty and name not in kwargs:
            problems.append(f"{name}: missing required argument")
    try:
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:
        hints = {}
    for name, value in kwargs.items():
        if name in hints and not skip_types(value):
            try:
                coerce(value, hints[name])
            except ConfigTypeError as exc:
                problems.append(f"{name}: {exc}")
    return problems


def check_component(spec: dict[str, Any], skip_types: Callable[[Any], bool] = lambda v: False) -> list[str]:
    """Every problem with one component spec, each as 'key: reason' ('' key for the path itself)."""
    try:
        target = import_object(spec[KEY])
    except ComponentError as exc:
        return [f"{KEY}: {exc}"]
    kwargs = {k: v for k, v in spec.items() if k != KEY}
    problems = check_arguments(target, kwargs, skip_types)
    for name, value in kwargs.items():
        if is_component(value):
            problems += [f"{name}.{p}" for p in check_component(value, skip_types)]
    return problems


def build_component(spec: dict[str, Any], **extra: Any) -> Any:
    """Call the component's target with its arguments (nested components built first) plus `extra`."""
    target = import_object(spec[KEY])
    kwargs = {k: build_component(v) if is_component(v) else v for k, v in spec.items() if k != KEY}
    hints: dict[str, Any] = {}
    try:
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:
        pass
    for name, value in kwargs.items():  # same coercion as at check time, so "1e-5" arrives as a float
        if name in hints:
            try:
                kwargs[name] = coerce(value, hints[name])
            except ConfigTypeError:
                pass
    return target(**kwargs, **extra)
