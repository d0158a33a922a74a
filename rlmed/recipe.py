"""recipe.yaml -> a typed, validated Recipe. Nothing heavy is loaded here.

Validation collects every problem before reporting, one line each, naming the recipe file, the stage id and
the key, and what was expected — so a user fixes a recipe in one pass instead of one error per launch.
Relative paths resolve against the current directory first, then the recipe's own folder (so a recipe shipped
next to its data works from anywhere).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rlmed.components import check_component, import_object, is_component, ComponentError
from rlmed.config_types import ConfigTypeError, coerce, field_types, required_fields, type_name
from rlmed.inputs import Ref, check_ref, parse_ref, resolve_local, validate_inputs
from rlmed.stages import UnknownStageKind, get_spec
from rlmed.stages.base import StageSpec
from rlmed.tracking import WandbSettings

TOP_KEYS = {"name", "description", "run_dir", "defaults", "wandb", "stages"}
EXTENSION_PREFIX = "x-"
STAGE_KEYS = {"id", "kind", "description", "inputs", "args", "trainer", "callbacks", "reward"}
ID_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
# Set by rlmed for every training stage; a recipe value would be silently overridden or break resume.
MANAGED_TRAINER_FIELDS = {"output_dir", "resume_from_checkpoint"}
# Trainer fields that also take `auto`, resolved on the machine that runs the stage (rlmed.training): one recipe
# then turns Liger's kernels on where they are installed and usable, and runs unchanged on a laptop.
AUTO_TRAINER_FIELDS = {"use_liger_kernel"}


class RecipeError(ValueError):
    """Everything wrong with a recipe, one problem per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class Stage:
    """One validated stage: its spec, typed args, checked trainer fields and normalised inputs."""

    id: str
    kind: str
    spec: StageSpec
    inputs: dict[str, Any]  # name -> str | Ref (model/file) or list[DataSource] (data)
    args: Any
    trainer: dict[str, Any] = field(default_factory=dict)
    callbacks: list[dict[str, Any]] = field(default_factory=list)
    reward: dict[str, Any] | None = None

    def refs(self) -> list[Ref]:
        """Every `$stage.output` this stage reads: in its inputs and inside its reward block."""
        found: list[Ref] = []
        for value in self.inputs.values():
            for item in value if isinstance(value, list) else [value]:
                target = getattr(item, "path", item)
                if isinstance(target, Ref):
                    found.append(target)
        return found + component_refs(self.reward)

    def config(self) -> dict[str, Any]:
        """The stage's own configuration, as hashed to decide whether it must re-run. For a stage that trains,
        `trainer_defaults` (rlmed's and the stage kind's) count too: a new rlmed that changes one re-runs it."""
        config = {
            "kind": self.kind,
            "args": dataclasses.asdict(self.args),
            "trainer": self.trainer,
            "callbacks": self.callbacks,
            "reward": self.reward,
            "inputs": {k: describe_input(v) for k, v in self.inputs.items()},
        }
        if self.spec.trainer_config is not None:
            config["trainer_defaults"] = self.spec.default_trainer()
        return config


@dataclass
class Recipe:
    path: Path
    name: str
    run_dir: Path
    defaults: dict[str, Any]
    stages: list[Stage]
    wandb: WandbSettings | None = None

    def stage(self, stage_id: str) -> Stage:
        for stage in self.stages:
            if stage.id == stage_id:
                return stage
        raise KeyError(stage_id)


def component_refs(spec: Any) -> list[Ref]:
    """`$stage.output` strings anywhere inside a component spec (e.g. a reward model's `path: $rm.model`)."""
    if isinstance(spec, dict):
        return [ref for value in spec.values() for ref in component_refs(value)]
    if isinstance(spec, list):
        return [ref for value in spec for ref in component_refs(value)]
    ref = parse_ref(spec)
    return [ref] if ref is not None else []


def describe_input(value: Any) -> Any:
    """An input as JSON-able data, for config hashes and manifests: data sources as their fields (a nested
    `Ref` becomes {stage, output}), paths and references as strings."""
    if isinstance(value, list):
        return [describe_input(v) for v in value]
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return str(value)


def _suggest(name: str, options: Any) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


_CONFIG_CLASSES: dict[str, type] = {}


def _config_class(path: str) -> type:
    if path not in _CONFIG_CLASSES:
        _CONFIG_CLASSES[path] = import_object(path)
    return _CONFIG_CLASSES[path]


def load_recipe(path: str | Path, run_dir: str | Path | None = None, control: str | None = None) -> Recipe:
    """Parse and validate a recipe file; raise RecipeError listing every problem. `control` names a control
    run (rlmed.control) to derive from the recipe, e.g. "shuffled-rewards"."""
    path = Path(path)
    where = str(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise RecipeError([f"{where}: recipe file not found"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise RecipeError([f"{where}{line}: invalid YAML: {getattr(exc, 'problem', exc)}"]) from None
    if control is not None:
        from rlmed.control import apply_control

        try:
            raw = apply_control(raw, control)
        except ValueError as exc:
            raise RecipeError([f"{where}: --control: {exc}"]) from None
    return parse_recipe(raw, path, run_dir)


def parse_recipe(raw: Any, path: Path, run_dir: str | Path | None = None) -> Recipe:
    where = str(path)
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise RecipeError([f"{where}: expected a mapping with 'name' and 'stages', got {type(raw).__name__}"])
    for key in raw:
        # "x-" keys are free: a place for YAML anchors that several stages share (`reward: *feedback_reward`).
        if key not in TOP_KEYS and not str(key).startswith(EXTENSION_PREFIX):
            problems.append(f"{where}: {key}: unknown top-level key{_suggest(str(key), TOP_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.append(f"{where}: name: required, a non-empty string")
        name = path.stem
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        problems.append(f"{where}: defaults: expected a mapping, got {type(defaults).__name__}")
        defaults = {}
    run_dir_value = run_dir if run_dir is not None else raw.get("run_dir", f"runs/{name}")
    if not isinstance(run_dir_value, (str, Path)):
        problems.append(f"{where}: run_dir: expected a path string, got {type(run_dir_value).__name__}")
        run_dir_value = f"runs/{name}"
    wandb = None
    if raw.get("wandb") is not None:
        try:
            wandb = coerce(raw["wandb"], WandbSettings)
        except ConfigTypeError as exc:
            problems.append(f"{where}: wandb: {exc}")
    raw_stages = raw.get("stages")
    if not isinstance(raw_stages, list) or not raw_stages:
        problems.append(f"{where}: stages: required, a non-empty list of stages")
        raw_stages = []

    stages: list[Stage] = []
    specs: dict[str, StageSpec] = {}  # stages seen so far, for checking references
    used_defaults: set[str] = set()
    for index, raw_stage in enumerate(raw_stages):
        stage = _parse_stage(raw_stage, index, path, defaults, specs, used_defaults, problems)
        if stage is not None:
            stages.append(stage)
    for key in defaults:
        if key not in used_defaults and stages:
            problems.append(f"{where}: defaults.{key}: no stage in this recipe has a field named '{key}'")
    if problems:
        raise RecipeError(problems)
    return Recipe(path=path, name=name, run_dir=Path(run_dir_value), defaults=defaults, stages=stages, wandb=wandb)


def _parse_stage(raw: Any, index: int, path: Path, defaults: dict, specs: dict[str, StageSpec],
                 used_defaults: set[str], problems: list[str]) -> Stage | None:
    where = f"{path}: stages[{index}]"
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a mapping with id and kind, got {type(raw).__name__}")
        return None
    stage_id = raw.get("id")
    if not isinstance(stage_id, str) or not ID_PATTERN.match(stage_id):
        problems.append(f"{where}: id: required, letters, digits, '_' or '-' (got {stage_id!r})")
        stage_id = f"#{index}"
    elif stage_id in specs:
        problems.append(f"{where}: id: duplicate stage id '{stage_id}'")
    else:
        where = f"{path}: stage '{stage_id}'"
    for key in raw:
        if key not in STAGE_KEYS:
            problems.append(f"{where}: {key}: unknown stage key{_suggest(str(key), STAGE_KEYS)}")
    kind = raw.get("kind")
    if not isinstance(kind, str):
        problems.append(f"{where}: kind: required, the stage kind as a string")
        return None
    try:
        spec = get_spec(kind)
    except UnknownStageKind as exc:
        problems.append(f"{where}: kind: {exc}")
        return None

    inputs = validate_inputs(raw.get("inputs"), spec, where, path, specs, problems)
    args = _parse_args(raw.get("args"), spec, where, defaults, used_defaults, problems)
    trainer = _parse_trainer(raw.get("trainer"), spec, where, defaults, used_defaults, problems, path)
    callbacks = _parse_callbacks(raw.get("callbacks"), spec, where, problems)
    reward = _parse_reward(raw.get("reward"), spec, where, specs, problems)
    if stage_id not in specs and not stage_id.startswith("#"):
        specs[stage_id] = spec
    if args is None:
        return None
    return Stage(id=stage_id, kind=kind, spec=spec, inputs=inputs, args=args, trainer=trainer, callbacks=callbacks,
                 reward=reward)


def _parse_args(raw: Any, spec: StageSpec, where: str, defaults: dict, used_defaults: set[str],
                problems: list[str]) -> Any:
    raw = raw if raw is not None else {}
    if not isinstance(raw, dict):
        problems.append(f"{where}: args: expected a mapping, got {type(raw).__name__}")
        return None
    types = field_types(spec.args)
    values: dict[str, Any] = {}
    for key, value in defaults.items():
        if key in types:
            values[key] = value
            used_defaults.add(key)
    ok = True
    for key, value in raw.items():
        if key not in types:
            problems.append(f"{where}: args.{key}: unknown argument of stage kind '{spec.kind}'"
                            f"{_suggest(str(key), types)} (accepted: {', '.join(types)})")
            ok = False
            continue
        values[key] = value
    for key, value in list(values.items()):
        try:
            values[key] = coerce(value, types[key])
        except ConfigTypeError as exc:
            source = "args" if key in raw else "defaults"
            problems.append(f"{where}: {source}.{key}: {exc}")
            ok = False
    for key in required_fields(spec.args):
        if key not in values:
            problems.append(f"{where}: args.{key}: missing required argument ({type_name(types[key])})")
            ok = False
    if not ok:
        return None
    try:
        return spec.args(**values)
    except (ValueError, TypeError) as exc:  # cross-field checks in the Args' __post_init__
        problems.append(f"{where}: args: {exc}")
        return None


def _parse_trainer(raw: Any, spec: StageSpec, where: str, defaults: dict, used_defaults: set[str],
                   problems: list[str], recipe_path: Path) -> dict[str, Any]:
    if spec.trainer_config is None:
        if raw:
            problems.append(f"{where}: trainer: stage kind '{spec.kind}' does not train; remove this block")
        return {}
    if raw is not None and not isinstance(raw, dict):
        problems.append(f"{where}: trainer: expected a mapping of {spec.trainer_config} fields")
        return {}
    config_cls = _config_class(spec.trainer_config)
    types = field_types(config_cls)
    arg_fields = field_types(spec.args)
    values: dict[str, Any] = {}
    for key, value in defaults.items():  # defaults go to args first; trainer gets the rest it knows
        if key in types and key not in arg_fields:
            values[key] = value
            used_defaults.add(key)
    for key, value in (raw or {}).items():
        if key in MANAGED_TRAINER_FIELDS:
            problems.append(f"{where}: trainer.{key}: set by rlmed (checkpoints live in the stage folder); remove it")
        elif key not in types:
            problems.append(f"{where}: trainer.{key}: not a field of {spec.trainer_config}{_suggest(str(key), types)}")
        else:
            values[key] = value
    for key, value in list(values.items()):
        if key in AUTO_TRAINER_FIELDS and value == "auto":
            continue
        try:
            values[key] = coerce(value, types[key])
        except ConfigTypeError as exc:
            also = " (or auto)" if key in AUTO_TRAINER_FIELDS else ""
            problems.append(f"{where}: trainer.{key}: {exc}{also}")
    if isinstance(values.get("deepspeed"), str):
        found = _deepspeed_config(values["deepspeed"], recipe_path)
        if found is None:
            source = "trainer" if "deepspeed" in (raw or {}) else "defaults"
            problems.append(f"{where}: {source}.deepspeed: DeepSpeed config '{values['deepspeed']}' not found "
                            f"(looked in the current directory, next to the recipe and in {PROJECT_ROOT})")
        else:
            values["deepspeed"] = str(found)
    return values


# The checkout rlmed runs from, where ds_configs/ lives: `deepspeed: ds_configs/zero3.json` works from anywhere.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _deepspeed_config(value: str, recipe_path: Path) -> Path | None:
    found = resolve_local(value, recipe_path)
    if found is None and (PROJECT_ROOT / value).is_file():
        found = PROJECT_ROOT / value
    return found if found is not None and found.is_file() else None


def _parse_reward(raw: Any, spec: StageSpec, where: str, earlier: dict[str, StageSpec],
                  problems: list[str]) -> dict[str, Any] | None:
    """The stage's reward source: a `_component_` checked against its signature, its references checked."""
    if raw is None:
        if spec.reward == "required":
            problems.append(f"{where}: reward: stage kind '{spec.kind}' needs a reward source, e.g. "
                            f"{{_component_: reward.similarity.ReferenceSimilarity}}")
        return None
    if spec.reward is None:
        problems.append(f"{where}: reward: stage kind '{spec.kind}' takes no reward source; remove this block")
        return None
    if not is_component(raw):
        problems.append(f"{where}: reward: expected a mapping with _component_: package.module.Class")
        return None
    for problem in check_component(raw, skip_types=lambda v: parse_ref(v) is not None):
        problems.append(f"{where}: reward.{problem}")
    for ref in component_refs(raw):
        check_ref(ref, f"{where}: reward", earlier, problems)
    return raw


def _parse_callbacks(raw: Any, spec: StageSpec, where: str, problems: list[str]) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if spec.trainer_config is None:
        problems.append(f"{where}: callbacks: stage kind '{spec.kind}' does not train; remove this block")
        return []
    if not isinstance(raw, list):
        problems.append(f"{where}: callbacks: expected a list of {{_component_: ...}} mappings")
        return []
    callbacks = []
    for i, item in enumerate(raw):
        if not is_component(item):
            problems.append(f"{where}: callbacks[{i}]: expected a mapping with _component_: package.module.Class")
            continue
        for problem in check_component(item, skip_types=lambda v: parse_ref(v) is not None):
            problems.append(f"{where}: callbacks[{i}].{problem}")
        callbacks.append(item)
    return callbacks


__all__ = ["Recipe", "RecipeError", "Stage", "load_recipe", "parse_recipe", "Ref", "ComponentError"]
