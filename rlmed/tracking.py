"""Weights & Biases for every stage, and the redaction that keeps secrets out of configs and manifests.

A top-level `wandb:` block in a recipe makes each stage one W&B run: group = the recipe run's name, job_type =
the stage kind, name = the stage id, config = the stage's resolved config (secrets redacted), every metrics.jsonl
record logged at its step, and the stage's final metrics as the run summary. Only the main rank logs.
WANDB_MODE=offline works with no network (runs land in run_dir/wandb/, or in $WANDB_DIR/wandb/ when set).

Patient text: tables carry it (PPO's sampled prompts, answers and doctors' references; the evaluation report's
tables), and W&B is a hosted service. So every string sent to W&B (table cells, logged values, the summary) is
de-identified first with reward.deid, the masking the judges use, whether the run is online or offline (an
offline run is usually synced later). `wandb.text_tables` chooses: masked (default), off (no tables go to W&B;
they stay in <stage>/tables/*.jsonl), or raw, which is refused unless `wandb.mode` is offline or disabled.
The patterns are the defaults plus `wandb.deid_patterns`, and also every pattern a judge in the stage's own
config adds (`deid_patterns`), so a pattern written for the judge is never forgotten for W&B.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from reward.deid import Deidentifier
from reward.urls import has_credentials, public_url

logger = logging.getLogger(__name__)

REDACTED = "***"
# Name parts that make a key's value a secret (`hub_token`, `api_key`, `db_password`); whole parts only, so
# `max_tokens` is not one. A key ending in `_env` names an environment variable, not a secret, and is kept.
SECRET_PARTS = {"token", "secret", "password", "passwd", "credential", "credentials", "apikey", "auth"}
SECRET_PAIRS = {("api", "key"), ("access", "key"), ("private", "key"), ("secret", "key")}
SECRET_ENV = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL)", re.IGNORECASE)
TEXT_TABLES = ("masked", "off", "raw")
# Recipe modes under which nothing is uploaded while the run lasts: the only ones raw text may go to.
LOCAL_MODES = ("offline", "disabled")


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
    text_tables: Literal["masked", "off", "raw"] = "masked"
    """Tables (PPO's samples, the evaluation report) sent to W&B: masked = de-identified like every other string
    sent there; off = none (they stay in <stage>/tables/*.jsonl); raw = unmasked, only with mode offline or
    disabled (a later `wandb sync` uploads them as they are)."""
    deid_patterns: dict[str, str] | None = None
    """Extra or overriding de-identification patterns, in the judge's `deid_patterns` form (reward.deid)."""

    def __post_init__(self) -> None:
        if self.mode not in (None, "online", "offline", "disabled"):
            raise ValueError(f"wandb.mode must be online, offline or disabled, got {self.mode!r}")
        if self.text_tables not in TEXT_TABLES:
            raise ValueError(f"wandb.text_tables must be masked, off or raw, got {self.text_tables!r}")
        check_raw_allowed(self.text_tables, self.mode)
        Deidentifier(self.deid_patterns)  # a bad regex is reported when the recipe loads, not mid-run


def check_raw_allowed(text_tables: str, mode: str | None) -> None:
    """Refuse unmasked patient text unless the run stays on this machine. The mode must be written in the
    recipe: left to WANDB_MODE or W&B's default, the same recipe could upload raw text on another machine."""
    if text_tables != "raw" or mode in LOCAL_MODES:
        return
    has = f"wandb.mode: {mode}" if mode else "no wandb.mode (WANDB_MODE or W&B's default decides: maybe online)"
    raise ValueError(f"wandb.text_tables: raw sends patient text to W&B unmasked and is allowed only with "
                     f"wandb.mode: offline or disabled; this recipe has {has}. Use wandb.text_tables: masked "
                     f"(the default) or off, or set wandb.mode: offline")


def judge_patterns(config: Any) -> list[dict[str, str]]:
    """Every non-empty `deid_patterns` of a component in a stage config (its judges, also inside a Composite or
    an evaluate stage's `judge`), except a judge's with `deidentify: false`."""
    if isinstance(config, list):
        return [p for item in config for p in judge_patterns(item)]
    if not isinstance(config, dict):
        return []
    own = config.get("deid_patterns")
    found = [own] if isinstance(own, dict) and own and config.get("deidentify", True) is not False else []
    return found + [p for key, value in config.items() if key != "deid_patterns" for p in judge_patterns(value)]


class TextMask:
    """De-identifies every string inside a value sent to W&B (dicts and lists walked), unless tables are raw.

    One Deidentifier per pattern set, applied in turn: the W&B settings' and each of the stage's judges', so
    the result masks the union (a judge that disables a default pattern disables it for itself only)."""

    def __init__(self, settings: WandbSettings, config: dict[str, Any] | None = None) -> None:
        self.enabled = settings.text_tables != "raw"
        self.deids = [Deidentifier(settings.deid_patterns)] + [Deidentifier(p) for p in judge_patterns(config)]

    def __call__(self, value: Any) -> Any:
        if not self.enabled:
            return value
        if isinstance(value, str):
            for deid in self.deids:
                value = deid.mask(value)
            return value
        if isinstance(value, dict):
            return {k: self(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self(v) for v in value]
        return value


def _secret_values() -> set[str]:
    """Values of environment variables that look like secrets (long enough not to match ordinary words)."""
    return {v for k, v in os.environ.items() if SECRET_ENV.search(k) and len(v) >= 8}


def redact(obj: Any, _secrets: set[str] | None = None) -> Any:
    """A copy of `obj` with secret-looking keys' values and any secret environment value replaced by ***, and
    URLs without their user-info and query (where gateways put keys no environment variable names)."""
    secrets = _secret_values() if _secrets is None else _secrets
    if isinstance(obj, dict):
        return {k: REDACTED if isinstance(k, str) and is_secret_key(k) and v not in (None, "")
                else redact(v, secrets) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v, secrets) for v in obj]
    if isinstance(obj, str):
        if obj.startswith(("http://", "https://")) and has_credentials(obj):
            obj = public_url(obj) or ""
        for secret in secrets:
            if secret in obj:
                obj = obj.replace(secret, REDACTED)
    return obj


def _cell(value: Any) -> Any:
    """A table cell: W&B tables take scalars and strings, so lists and dicts are shown as JSON text."""
    import json

    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return json.dumps(value, ensure_ascii=False)


class StageRun:
    """One W&B run for one stage; `log` is a metrics sink, `finish` records the summary."""

    def __init__(self, settings: WandbSettings, recipe_name: str, stage_id: str, kind: str,
                 config: dict[str, Any], run_dir: Path):
        import wandb

        check_raw_allowed(settings.text_tables, settings.mode)  # also for settings built in code
        self.text_tables = settings.text_tables
        self.mask = TextMask(settings, config)
        self.run = wandb.init(
            project=settings.project, entity=settings.entity, tags=settings.tags or None,
            group=settings.group or recipe_name, job_type=kind, name=stage_id, config=redact(config),
            # The user's WANDB_DIR wins, else the run folder, beside its stages. Passed explicitly: W&B reads the
            # variable once per process (its settings singleton), so a later change would go unseen.
            dir=os.environ.get("WANDB_DIR") or str(run_dir), mode=settings.mode, reinit="create_new",
        )
        mode = str(self.run.settings.mode)
        if self.text_tables == "raw" and mode not in (*LOCAL_MODES, "dryrun"):  # whatever overrode the recipe
            self.run.finish(exit_code=1)
            check_raw_allowed("raw", mode)
        logger.info("stage %s logs to W&B run %s (%s; tables: %s)", stage_id, self.run.id, mode, self.text_tables)

    def log(self, metrics: dict[str, Any], step: int | None) -> None:
        values = {k: self.mask(v) for k, v in metrics.items() if k != "step"}
        self.run.log(values, step=step)

    def log_table(self, name: str, rows: list[dict[str, Any]], step: int | None) -> None:
        """Rows as a W&B table (one per call; W&B shows the latest and keeps each step's), every cell masked
        unless text_tables is raw; nothing with text_tables off."""
        import wandb

        if not rows or self.text_tables == "off":
            return
        columns = list(rows[0])
        table = wandb.Table(columns=columns,
                            data=[[redact(self.mask(_cell(row.get(c)))) for c in columns] for row in rows])
        self.run.log({name: table}, step=step)

    def finish(self, summary: dict[str, Any] | None, failed: bool = False) -> None:
        if summary:
            self.run.summary.update(redact(self.mask(summary)))
        self.run.finish(exit_code=1 if failed else 0)
