"""`rlmed status RUN_DIR` and `rlmed runs`: what a run's stages did, without opening manifests by hand.

A stage folder tells its state by the files the runner leaves: `manifest.json` (done), `failed.json` (failed,
with the error), `running.json` (started by a process: running while that process lives on this host, else
interrupted), `started.json` alone (interrupted before it got that far). An interrupted stage shows the
checkpoint a re-run would resume from (it resumes only when its configuration is unchanged).
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rlmed.artifacts import FAILED, MANIFEST, RUNNING, STARTED, last_complete_checkpoint

__all__ = ["StageStatus", "run_status", "find_runs", "format_status", "format_runs"]

# The metrics a status line shows when a stage reports them (the runner's summary keys, in brief).
KEY_METRICS = ("global_step", "last_loss", "eval_loss", "heldout_reward_start", "heldout_reward_end",
               "eval_pairwise_accuracy", "pairs", "scored", "models")


@dataclass
class StageStatus:
    id: str
    kind: str
    state: str  # done | failed | running | interrupted | not run
    duration_s: float | None = None
    ended_at: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    resume_from: str | None = None  # the checkpoint a re-run would resume from


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _alive(runner: dict[str, Any]) -> bool:
    """Whether the process that wrote running.json still lives (only knowable on the same host)."""
    if runner.get("host") != socket.gethostname():
        return True  # another node's process: assume running, and say where
    try:
        os.kill(int(runner["pid"]), 0)
    except (ProcessLookupError, ValueError, KeyError, TypeError):
        return False
    except PermissionError:
        return True
    return True


def stage_status(stage_dir: Path, kind: str = "?") -> StageStatus:
    """The state of one stage folder (kind from its manifest or started.json when known)."""
    manifest = _read(stage_dir / MANIFEST)
    if manifest is not None:
        metrics = manifest.get("metrics", {})
        return StageStatus(stage_dir.name, manifest.get("kind", kind), "done", manifest.get("duration_s"),
                           manifest.get("ended_at"), {k: metrics[k] for k in KEY_METRICS if k in metrics})
    failed = _read(stage_dir / FAILED)
    checkpoint = last_complete_checkpoint(stage_dir / "checkpoints")
    resume = str(checkpoint.relative_to(stage_dir)) if checkpoint else None
    if failed is not None:
        return StageStatus(stage_dir.name, kind, "failed", error=failed.get("error"), ended_at=failed.get("at"),
                           resume_from=resume)
    runner = _read(stage_dir / RUNNING)
    if runner is not None:
        state = "running" if _alive(runner) else "interrupted"
        where = f" on {runner.get('host')} (pid {runner.get('pid')})" if state == "running" else ""
        return StageStatus(stage_dir.name, kind, state + where, ended_at=runner.get("started_at"), resume_from=resume)
    if (stage_dir / STARTED).exists():
        return StageStatus(stage_dir.name, kind, "interrupted", resume_from=resume)
    return StageStatus(stage_dir.name, kind, "not run")


def run_status(run_dir: Path, order: list[tuple[str, str]] | None = None) -> list[StageStatus]:
    """Every stage of a run folder: in the recipe's order with its kinds when `order` ([(id, kind)]) is given
    (stages never run show as "not run"), else the folders that look like stages, oldest first."""
    run_dir = Path(run_dir)
    if order is not None:
        return [stage_status(run_dir / stage_id, kind) for stage_id, kind in order]
    folders = [p for p in run_dir.iterdir() if p.is_dir() and (p / STARTED).exists()] if run_dir.is_dir() else []
    folders.sort(key=lambda p: (p / STARTED).stat().st_mtime)
    return [stage_status(p) for p in folders]


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_status(run_dir: Path, stages: list[StageStatus]) -> str:
    lines = [f"run {run_dir}"]
    width = max([len(s.id) for s in stages] + [5])
    for s in stages:
        took = f"{s.duration_s:8.1f}s" if s.duration_s is not None else " " * 9
        detail = ", ".join(f"{k}={_short(v)}" for k, v in s.metrics.items())
        if s.error:
            detail = s.error
        if s.resume_from and s.state != "done":
            detail = (detail + "; " if detail else "") + f"would resume from {s.resume_from}"
        lines.append(f"  {s.id:<{width}}  {s.kind:<15} {s.state:<12} {took}  {detail}".rstrip())
    if not stages:
        lines.append("  (no stages started here)")
    return "\n".join(lines)


def find_runs(root: Path) -> list[Path]:
    """Run folders under `root` (or `root` itself): folders with at least one stage folder in them."""
    root = Path(root)
    if not root.is_dir():
        return []
    candidates = [root] + sorted(p for p in root.iterdir() if p.is_dir())
    return [p for p in candidates if any((c / STARTED).exists() for c in p.iterdir() if c.is_dir())]


def format_runs(runs: list[Path]) -> str:
    if not runs:
        return "no runs found"
    lines = []
    for run in runs:
        stages = run_status(run)
        counts: dict[str, int] = {}
        for s in stages:
            counts[s.state.split(" ")[0]] = counts.get(s.state.split(" ")[0], 0) + 1
        last = max(((run / s.id / STARTED).stat().st_mtime for s in stages), default=None)
        when = datetime.fromtimestamp(last).strftime("%Y-%m-%d %H:%M") if last else "-"
        summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        lines.append(f"{str(run):<40} {when}  {summary}")
    return "\n".join(lines)
