"""A stage's `inputs:` block: `$stage.output` references, local paths, Hub ids, weighted data sources.

Forms accepted for an input:
- model / file: `path`, `org/name` (a Hub id), or `$stage.output`
- data: one of those, or a list whose items are those or `{path, weight, format, columns, on_bad_rows}`
  mappings (mixed by weight; `columns` renames the user's columns to rlmed's fields, `on_bad_rows: skip` drops
  and counts rows that fail conversion instead of stopping the stage)

A Hub-style id that is not a local path is accepted here and only fails, with a clear message, when the
stage loads it and no hub is reachable. A path that looks like a file (has a data/model file extension or
starts with ./, ../ or /) and does not exist is reported now.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rlmed.data.formats import SOURCE_FORMATS as DATA_FORMATS
from rlmed.data.sources import DataSource
from rlmed.stages.base import Input, StageSpec

REF_PATTERN = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_-]*)\.([A-Za-z_][A-Za-z0-9_]*)$")
HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+$")
FILE_SUFFIXES = {".jsonl", ".json", ".txt", ".csv", ".tsv", ".parquet", ".arrow", ".yaml", ".yml",
                 ".safetensors", ".bin", ".pt", ".jinja", ".md"}
DATA_SOURCE_KEYS = ("path", "weight", "format", "columns", "on_bad_rows", "text_unit", "config", "split")
ON_BAD_ROWS = ("fail", "skip")
TEXT_UNITS = ("line", "paragraph")


@dataclass(frozen=True)
class Ref:
    """`$stage.output`: an output of an earlier stage, resolved to a path when the stage runs."""

    stage: str
    output: str

    def __str__(self) -> str:
        return f"${self.stage}.{self.output}"


def parse_ref(value: Any) -> Ref | None:
    if isinstance(value, str):
        match = REF_PATTERN.match(value.strip())
        if match:
            return Ref(match.group(1), match.group(2))
    return None


def looks_like_hub_id(value: str) -> bool:
    return bool(HUB_ID_PATTERN.match(value)) and Path(value).suffix.lower() not in FILE_SUFFIXES


def resolve_local(value: str, recipe_path: Path) -> Path | None:
    """The existing local path `value` names (current directory first, then the recipe's folder), or None."""
    candidate = Path(value).expanduser()
    if candidate.is_absolute():
        return candidate if candidate.exists() else None
    for base in (Path.cwd(), recipe_path.resolve().parent):
        if (base / candidate).exists():
            return (base / candidate).resolve()
    return None


def validate_inputs(raw: Any, spec: StageSpec, where: str, recipe_path: Path, earlier: dict[str, StageSpec],
                    problems: list[str]) -> dict[str, Any]:
    """Normalise a stage's inputs; append a problem line for each bad one."""
    raw = raw if raw is not None else {}
    if not isinstance(raw, dict):
        problems.append(f"{where}: inputs: expected a mapping of input name to path or $stage.output")
        return {}
    inputs: dict[str, Any] = {}
    for name in raw:
        if name not in spec.inputs:
            problems.append(f"{where}: inputs.{name}: unknown input of stage kind '{spec.kind}' "
                            f"(accepted: {', '.join(spec.inputs) or 'none'})")
    for name, declared in spec.inputs.items():
        key = f"inputs.{name}"
        if name not in raw or raw[name] is None:
            if declared.required:
                problems.append(f"{where}: {key}: missing required {declared.type} input")
            continue
        if declared.type == "data":
            inputs[name] = _data_sources(raw[name], declared, f"{where}: {key}", recipe_path, earlier, problems)
        elif declared.many:  # e.g. the models an evaluate stage compares: a list of folders, Hub ids or refs
            items = raw[name] if isinstance(raw[name], list) else [raw[name]]
            if not items:
                problems.append(f"{where}: {key}: an empty list; give at least one {declared.type}")
            inputs[name] = [_single(v, declared, f"{where}: {key}[{i}]", recipe_path, earlier, problems)
                            for i, v in enumerate(items)]
        else:
            inputs[name] = _single(raw[name], declared, f"{where}: {key}", recipe_path, earlier, problems)
    return inputs


def check_ref(ref: Ref, where: str, earlier: dict[str, StageSpec], problems: list[str]) -> None:
    if ref.stage not in earlier:
        problems.append(f"{where}: {ref} refers to stage '{ref.stage}', which is not an earlier stage of this "
                        f"recipe (earlier stages: {', '.join(earlier) or 'none'})")
    elif ref.output not in earlier[ref.stage].outputs:
        outputs = ", ".join(earlier[ref.stage].outputs) or "none"
        problems.append(f"{where}: {ref}: stage '{ref.stage}' has no output '{ref.output}' (it writes: {outputs})")


def _single(value: Any, declared: Input, where: str, recipe_path: Path, earlier: dict[str, StageSpec],
            problems: list[str]) -> str | Ref | None:
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{where}: expected a path, a Hub id or $stage.output, got {type(value).__name__}")
        return None
    ref = parse_ref(value)
    if ref is not None:
        check_ref(ref, where, earlier, problems)
        return ref
    local = resolve_local(value, recipe_path)
    if local is not None:
        if declared.type == "model" and not local.is_dir():
            problems.append(f"{where}: '{value}' is a file; a model input must be a model folder")
        return str(local)
    if declared.type == "model" and looks_like_hub_id(value):
        return value
    problems.append(f"{where}: {declared.type} not found: '{value}' (relative paths are looked up in the current "
                    f"directory, then next to the recipe{'; a Hub id looks like org/name' if declared.type == 'model' else ''})")
    return None


def _data_sources(value: Any, declared: Input, where: str, recipe_path: Path, earlier: dict[str, StageSpec],
                  problems: list[str]) -> list[DataSource]:
    items = value if isinstance(value, list) else [value]
    if not items:
        problems.append(f"{where}: an empty list; give at least one data file")
    if len(items) > 1 and not declared.many:
        problems.append(f"{where}: takes one data source, got {len(items)}")
    sources: list[DataSource] = []
    for i, item in enumerate(items):
        here = f"{where}[{i}]" if isinstance(value, list) else where
        spec = item if isinstance(item, dict) else {"path": item}
        unknown = set(spec) - set(DATA_SOURCE_KEYS)
        if unknown:
            problems.append(f"{here}: unknown key(s) {', '.join(sorted(map(str, unknown)))} "
                            f"(a data source takes: {', '.join(DATA_SOURCE_KEYS)})")
            continue
        path = spec.get("path")
        weight = spec.get("weight")
        fmt = spec.get("format")
        if weight is not None:
            try:
                weight = float(weight)
                if weight < 0:
                    raise ValueError
            except (TypeError, ValueError):
                problems.append(f"{here}.weight: expected a number >= 0, got {spec.get('weight')!r}")
                continue
        if fmt is not None and fmt not in DATA_FORMATS + declared.formats:
            problems.append(f"{here}.format: expected one of {', '.join(DATA_FORMATS + declared.formats)}, "
                            f"got {fmt!r}")
            continue
        columns = _columns(spec.get("columns"), f"{here}.columns", problems)
        on_bad_rows = spec.get("on_bad_rows", "fail")
        if on_bad_rows not in ON_BAD_ROWS:
            problems.append(f"{here}.on_bad_rows: expected one of {', '.join(ON_BAD_ROWS)}, got {on_bad_rows!r}")
            continue
        text_unit = spec.get("text_unit", "line")
        if text_unit not in TEXT_UNITS:
            problems.append(f"{here}.text_unit: expected line (one document per line of a .txt file) or paragraph "
                            f"(documents separated by blank lines), got {text_unit!r}")
            continue
        if columns is False:
            continue
        hub = {key: spec[key] for key in ("config", "split") if key in spec}
        bad = [key for key, value in hub.items() if not isinstance(value, str) or not value.strip()]
        if bad:
            problems.append(f"{here}.{bad[0]}: expected the name of a Hub dataset's {bad[0]}, got {hub[bad[0]]!r}")
            continue
        extra = {"columns": columns, "on_bad_rows": on_bad_rows, "text_unit": text_unit, **hub}
        if not isinstance(path, str) or not path.strip():
            problems.append(f"{here}: expected a data file path, a Hub dataset id or $stage.output")
            continue
        ref = parse_ref(path)
        if ref is not None:
            check_ref(ref, here, earlier, problems)
            sources.append(DataSource(path=ref, weight=weight, format=fmt, **extra))  # type: ignore[arg-type]
            continue
        local = resolve_local(path, recipe_path)
        if local is not None:
            sources.append(DataSource(path=str(local), weight=weight, format=fmt, **extra))
        elif looks_like_hub_id(path):
            sources.append(DataSource(path=path, weight=weight, format=fmt, is_local=False, **extra))
        else:
            problems.append(f"{here}: data file not found: '{path}' (relative paths are looked up in the current "
                            f"directory, then next to the recipe)")
    weighted = [s.weight is not None for s in sources]
    if any(weighted) and not all(weighted):
        problems.append(f"{where}: give a weight to every data source or to none")
    elif sources and all(weighted) and not any(s.weight for s in sources):
        problems.append(f"{where}: all weights are 0; at least one source needs a positive weight")
    return sources


def _columns(value: Any, where: str, problems: list[str]) -> dict[str, str] | None | Literal[False]:
    """A data source's `columns:` ({rlmed field: user column}); False (with a problem line) when malformed."""
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        got = "an empty mapping" if isinstance(value, dict) else type(value).__name__
        problems.append(f"{where}: expected a mapping of rlmed field name to your column name "
                        f"(e.g. {{instruction: question, output: answer}}), got {got}")
        return False
    for field_name, column in value.items():
        if not isinstance(field_name, str) or not field_name.strip():
            problems.append(f"{where}: field name {field_name!r}: expected a non-empty string")
            return False
        if not isinstance(column, str) or not column.strip():
            problems.append(f"{where}.{field_name}: expected your column's name (a non-empty string), "
                            f"got {type(column).__name__} {column!r}")
            return False
    return dict(value)
