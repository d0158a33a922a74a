"""A user-defined stage kind that trains nothing but builds its trainer config as every training stage does
(rlmed.training.trainer_config), so the runner's handling of trainer defaults can be tested in seconds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlmed.stages.base import Input, StageContext, StageSpec


@dataclass(kw_only=True)
class Args:
    note: str = ""


def run(ctx: StageContext, inputs: dict[str, Any], args: Args) -> dict[str, Any]:
    from rlmed import training

    with open(ctx.run_dir / "executions.log", "a", encoding="utf-8") as log:
        log.write(ctx.stage_id + "\n")
    config = training.trainer_config(ctx, "transformers.TrainingArguments", has_eval=False, max_steps=3)
    ctx.output("text").write_text(f"{config.learning_rate} {config.per_device_train_batch_size}\n", encoding="utf-8")
    return {}


SPEC = StageSpec(kind="trainer_probe", args=Args, inputs={"source": Input("data")}, outputs={"text": "out.txt"},
                 run=run, trainer_config="transformers.TrainingArguments",
                 trainer_defaults={"learning_rate": 3e-4, "per_device_train_batch_size": 4})
