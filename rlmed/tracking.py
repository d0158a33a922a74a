"""Weights & Biases for every stage, and the redaction that keeps secrets out of configs and manifests.

A top-level `wandb:` block in a recipe makes each stage one W&B run: group = the recipe run's name, job_type =
the stage kind, name = the stage id, config = the stage's resolved config (secrets redacted), every metrics.jsonl
record logged at its step, and the stage's final metrics as the run summary. Only the main rank logs.
WANDB_MODE=offline works with no network (runs land in run_dir/wandb/).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

REDACTED = "***"
# Name parts that make a key's value a secret (`hub_token`, `api_key`, `db_password`); whole parts only, so
# `max_tokens` is not one. A key ending in `_env` names an environment variable, not a secret, and is kept.
SECRET_PARTS = {"token", "secret", "password", "passwd", "credential", "credentials", "apikey", "auth"}
SECRET_PAIRS = {("api", "key"), ("access", "key"), ("private", "key"), ("secret", "key")}
SECRET_ENV = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL)", re.IGNORECASE)


def is_secret_key(key: str) -> bool:
    parts = [p for p in re.split(r"[^a-z0-9]+", key.lower()) if p]
    if not parts or parts[-1] == "env":
        return False
    return bool(SECRET_PARTS.intersection(parts)) or any(pair in SECRET_PAIRS for pair in zip(parts, parts[1:]))


@dataclass(kw_only=True)
class WandbSettings:
    project: str
    """W&B project the stage runs go to."""
    entity: str | None = None
    """Team or user; None: the logged-in default."""
    tags: list[str] = field(default_factory=list)
    group: str | None = None
    """Run group; None: the recipe's name, so a recipe's stages are grouped together."""
    mode: str | None = None
    """online, offline or disabled; None: WANDB_MODE or W&B's default."""

    def __post_init__(self) -> None:
        if self.mode not in (None, "online", "offline", "disabled"):
            raise ValueError(f"wandb.mode must be online, offline or disabled, got {self.mode!r}")


def _secret_values() -> set[str]:
    """Values of environment variables that look like secrets (long enough not to match ordinary words)."""
    return {v for k, v in os.environ.items() if SECRET_ENV.search(k) and len(v) >= 8}


def redact(obj: Any, _secrets: set[str] | None = None) -> Any:
    """A copy of `obj` with secret-looking keys' values and any secret environment value replaced by ***."""
    secrets = _secret_values() if _secrets is None else _secrets
    if isinstance(obj, dict):
        return {k: REDACTED if isinstance(k, str) and is_secret_key(k) and v not in (None, "")
                else redact(v, secrets) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v, secrets) for v in obj]
    if isinstance(obj, str):
        for secret in secrets:
            if secret in obj:
                obj = obj.replace(secret, REDACTED)
    return obj


def _cell(value: Any) -> Any:
    """A table cell: W&B tables take scalars and strings, so lists and dicts are shown as JSON text."""
    import json

    return value if value is None or isinstance(value, (str, int, float, bool)) else json.dumps(value, ensure_ascii=False)


class StageRun:
    """One W&B run for one stage; `log` is a metrics sink, `finish` records the summary."""

    def __init__(self, settings: WandbSettings, recipe_name: str, stage_id: str, kind: str,
                 config: dict[str, Any], run_dir: Path):
        import wandb

        self.run = wandb.init(
            project=settings.project, entity=settings.entity, tags=settings.tags or None,
            group=settings.group or recipe_name, job_type=kind, name=stage_id, config=redact(config),
            dir=str(run_dir), mode=settings.mode, reinit="create_new",
        )
        logger.info("stage %s logs to W&B run %s (%s)", stage_id, self.run.id, self.run.settings.mode)

    def log(self, metrics: dict[str, Any], step: int | None) -> None:
        values = {k: v for k, v in metrics.items() if k != "step"}
        self.run.log(values, step=step)

    def log_table(self, name: str, rows: list[dict[str, Any]], step: int | None) -> None:
        """Rows as a W&B table (one per call; W&B shows the latest and keeps each step's)."""
        import wandb

        if not rows:
            return
        columns = list(rows[0])
        table = wandb.Table(columns=columns, data=[[redact(_cell(row.get(c))) for c in columns] for row in rows])
        self.run.log({name: table}, step=step)

    def finish(self, summary: dict[str, Any] | None, failed: bool = False) -> None:
        if summary:
            self.run.summary.update(redact(summary))
        self.run.finish(exit_code=1 if failed else 0)
