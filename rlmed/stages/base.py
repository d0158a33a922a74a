"""The contract between the runner and a stage.

A stage file declares one `SPEC = StageSpec(...)`: its `Args` dataclass, the inputs it takes, the outputs it
writes (fixed names inside its own folder, so later stages can reference them before it has run), the trl or
transformers config class its `trainer:` block is checked against, and `run(ctx, inputs, args)`.
Stage files keep heavy imports (torch, transformers) inside `run`, so validating a recipe stays fast.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from rlmed.artifacts import MetricsLog
from rlmed.data.sources import DataSource  # re-exported: stage code takes it from here with the rest

__all__ = ["DataSource", "Input", "InputType", "StageContext", "StageSpec"]

InputType = Literal["model", "data", "file"]


@dataclass(frozen=True)
class Input:
    """One declared input. `model`: a model folder or Hub id; `data`: data files (a list, mixable by weight
    when `many`); `file`: any single file."""

    type: InputType
    many: bool = False
    required: bool = True
    doc: str = ""


@dataclass(frozen=True)
class StageSpec:
    kind: str
    args: type
    inputs: dict[str, Input]
    outputs: dict[str, str]  # output name -> path relative to the stage folder
    run: Callable[["StageContext", dict[str, Any], Any], dict[str, Any] | None]
    trainer_config: str | None = None  # dotted path of the config class `trainer:` fields are checked against
    ranks: Literal["all", "main"] = "all"  # "main": runs on the main rank only while the others wait
    optional_outputs: frozenset[str] = frozenset()  # written only when the stage's args ask (e.g. merged)
    reward: Literal["required", "optional"] | None = None  # whether the stage takes a `reward:` block
    doc: str = ""


@dataclass
class StageContext:
    """What the runner hands a stage: where to write, its recipe blocks, and the metrics log."""

    stage_id: str
    kind: str
    stage_dir: Path
    run_dir: Path
    recipe_name: str
    seed: int
    trainer: dict[str, Any] = field(default_factory=dict)  # user `trainer:` fields, already type-checked
    callbacks: list[dict[str, Any]] = field(default_factory=list)  # `_component_` specs of trainer callbacks
    reward: dict[str, Any] | None = None  # the `reward:` component spec, references resolved to paths
    outputs: dict[str, Path] = field(default_factory=dict)
    resume: bool = False  # a checkpoint in stage_dir comes from this same config and may be resumed
    metrics: MetricsLog = field(init=False)

    def __post_init__(self) -> None:
        from rlmed.artifacts import METRICS

        self.metrics = MetricsLog(self.stage_dir / METRICS)
        self.log = logging.getLogger(f"rlmed.stage.{self.stage_id}")

    def output(self, name: str) -> Path:
        return self.outputs[name]
