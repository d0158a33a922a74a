"""The contract between the runner and a stage.

A stage file declares one `SPEC = StageSpec(...)`: its `Args` dataclass, the inputs it takes, the outputs it
writes (fixed names inside its own folder, so later stages can reference them before it has run), the trl or
transformers config class its `trainer:` block is checked against, the trainer fields it sets by default, and
`run(ctx, inputs, args)`.
Stage files keep heavy imports (torch, transformers) inside `run`, so validating a recipe stays fast.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Literal, Mapping

from rlmed.artifacts import MetricsLog
from rlmed.data.sources import DataSource  # re-exported: stage code takes it from here with the rest

__all__ = ["DataSource", "Input", "InputType", "StageContext", "StageSpec", "TRAINER_DEFAULTS"]

# Trainer fields rlmed sets for every trainer-based stage; a stage's `trainer_defaults` and then the recipe's
# `trainer:` block override them. Logging every step feeds metrics.jsonl; checkpoints every 200 steps, two kept.
TRAINER_DEFAULTS: Mapping[str, Any] = MappingProxyType({
    "report_to": "none",
    "logging_steps": 1,
    "save_strategy": "steps",
    "save_steps": 200,
    "save_total_limit": 2,
    "eval_steps": 50,
    "dataloader_num_workers": 0,
})

InputType = Literal["model", "data", "file"]


@dataclass(frozen=True)
class Input:
    """One declared input. `model`: a model folder or Hub id; `data`: data files (a list, mixable by weight
    when `many`); `file`: any single file. `formats`: the `format:` names a data source of this input may give
    besides rlmed's row formats (evaluate's benchmark layouts), so a recipe's typo is caught before any stage
    runs, and no training input accepts a format its converter cannot read."""

    type: InputType
    many: bool = False
    required: bool = True
    doc: str = ""
    formats: tuple[str, ...] = ()


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
    # Trainer fields this stage sets unless the recipe does (batch size, learning rate, ...). Declared here, not
    # inside `run`, so that they show in --dry-run, land in the manifest and count in the stage's fingerprint:
    # a new rlmed that changes one re-runs the stages it affects.
    trainer_defaults: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.trainer_defaults and self.trainer_config is None:
            raise ValueError(f"stage kind {self.kind}: trainer_defaults given, but the stage names no trainer_config")

    def default_trainer(self) -> dict[str, Any]:
        """rlmed's trainer defaults under this stage's; empty for a stage that does not train."""
        if self.trainer_config is None:
            return {}
        return {**TRAINER_DEFAULTS, **self.trainer_defaults}

    def effective_trainer(self, recipe_fields: Mapping[str, Any]) -> dict[str, Any]:
        """The trainer fields a run of this stage starts from: rlmed's < the stage's < the recipe's."""
        if self.trainer_config is None:
            return {}
        return {**self.default_trainer(), **recipe_fields}


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
    trainer_defaults: dict[str, Any] = field(default_factory=dict)  # rlmed's < the stage's (StageSpec)
    callbacks: list[dict[str, Any]] = field(default_factory=list)  # `_component_` specs of trainer callbacks
    reward: dict[str, Any] | None = None  # the `reward:` component spec, references resolved to paths
    outputs: dict[str, Path] = field(default_factory=dict)
    resume: bool = False  # a checkpoint in stage_dir comes from this same config and may be resumed
    metrics: MetricsLog = field(init=False)
    # The fields the stage's trainer config was built with (set by rlmed.training.trainer_config); the runner
    # writes them to the manifest, so that a run can be reproduced from it.
    trainer_fields: dict[str, Any] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        from rlmed.artifacts import METRICS

        self.metrics = MetricsLog(self.stage_dir / METRICS)
        self.log = logging.getLogger(f"rlmed.stage.{self.stage_id}")

    def output(self, name: str) -> Path:
        return self.outputs[name]

    def trainer_setting(self, name: str, default: Any = None) -> Any:
        """A trainer field as the run will see it: the recipe's value, else the stage's or rlmed's default."""
        return self.trainer.get(name, self.trainer_defaults.get(name, default))
