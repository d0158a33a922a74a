"""Runs a recipe's stages in order, skipping those whose manifest still matches.

A stage is up to date when its manifest exists, records the same config hash, and records for every input the
hash it has now: for a user file its content hash, for `$stage.output` the upstream manifest's hash (which
changes whenever the upstream stage re-runs). Because stages run in order, a re-run upstream makes every
dependant re-run after it, and nothing else.

Before a stage runs its old manifest is removed, so a crash leaves no manifest. `started.json` records the
fingerprint (config hash + input hashes) the stage folder was started with: if a crashed stage is run again
with the same fingerprint its checkpoints are resumed; otherwise the folder is cleared first.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rlmed import __version__, dist
from rlmed.artifacts import (
    FAILED, MANIFEST, RUNNING, STARTED, HashCache, atomic_write_json, git_revision, manifest_hash, package_versions,
    read_manifest, stable_hash,
)
from rlmed.data.sources import DataSource
from rlmed.inputs import Ref, parse_ref
from rlmed.recipe import Recipe, Stage, component_refs, describe_input
from rlmed.stages.base import StageContext
from rlmed.tracking import StageRun, redact

logger = logging.getLogger(__name__)


# What the one-line stage summary shows when a stage reports them (all numeric metrics otherwise).
SUMMARY_KEYS = ("global_step", "first_loss", "last_loss", "eval_loss", "last_reward_mean", "heldout_reward_start",
                "heldout_reward_end", "train_runtime", "models", "eval_sets", "contaminated_rows")


class RunError(RuntimeError):
    """A stage failed, or the requested selection cannot run; the message names the stage."""


@dataclass
class Planned:
    stage: Stage
    action: str  # "run" or "skip"
    reason: str
    inputs: dict[str, Any] = field(default_factory=dict)  # resolved: paths instead of references
    outputs: dict[str, Path] = field(default_factory=dict)


class Runner:
    def __init__(self, recipe: Recipe, only: str | None = None, start_from: str | None = None):
        self.recipe = recipe
        self.run_dir = recipe.run_dir.resolve()
        self.only = only
        self.start_from = start_from
        ids = [s.id for s in recipe.stages]
        for flag, value in (("--only", only), ("--from", start_from)):
            if value is not None and value not in ids:
                raise RunError(f"{flag} {value}: no such stage in {recipe.path} (stages: {', '.join(ids)})")
        self.hashes = HashCache(self.run_dir / ".rlmed" / "hash_cache.json")
        if any(dist.uses_deepspeed(s.trainer) for s in recipe.stages):
            dist.ensure_single_process_env()
        dist.init()

    # --- where things are -------------------------------------------------------------------------
    def stage_dir(self, stage_id: str) -> Path:
        return self.run_dir / stage_id

    def outputs(self, stage: Stage) -> dict[str, Path]:
        return {name: self.stage_dir(stage.id) / rel for name, rel in stage.spec.outputs.items()}

    def _ref_path(self, ref: Ref) -> str:
        upstream = self.recipe.stage(ref.stage)
        return str(self.stage_dir(ref.stage) / upstream.spec.outputs[ref.output])

    def resolve_inputs(self, stage: Stage) -> dict[str, Any]:
        resolved: dict[str, Any] = {}
        for name, value in stage.inputs.items():
            if isinstance(value, list):
                resolved[name] = [self._resolve_item(item) for item in value]
            else:
                resolved[name] = self._resolve_item(value)
        return resolved

    def _resolve_item(self, item: Any) -> Any:
        """One input value: a data source (its path resolved), a reference (its path), or a folder / Hub id."""
        if isinstance(item, Ref):
            return self._ref_path(item)
        if isinstance(item, DataSource) and isinstance(item.path, Ref):
            return dataclasses.replace(item, path=self._ref_path(item.path))
        return item

    def _resolve_component(self, spec: Any) -> Any:
        """A component spec with its `$stage.output` strings replaced by paths."""
        if isinstance(spec, dict):
            return {k: self._resolve_component(v) for k, v in spec.items()}
        if isinstance(spec, list):
            return [self._resolve_component(v) for v in spec]
        ref = parse_ref(spec)
        return self._ref_path(ref) if ref is not None else spec

    # --- fingerprints -----------------------------------------------------------------------------
    def _hash_one(self, value: Any) -> str | None:
        target = value.path if isinstance(value, DataSource) else value
        if isinstance(target, Ref):
            return manifest_hash(self.stage_dir(target.stage))
        if isinstance(value, DataSource) and not value.is_local:
            return f"hub:{target}"
        path = Path(target)
        if not path.exists():
            return f"hub:{target}"  # a Hub id; its content is fixed by the hub, not by us
        return self.hashes.path_hash(path)

    def fingerprint(self, stage: Stage) -> dict[str, Any]:
        inputs = {}
        for name, value in stage.inputs.items():
            inputs[name] = [self._hash_one(v) for v in value] if isinstance(value, list) else self._hash_one(value)
        for ref in {str(r): r for r in component_refs(stage.reward)}.values():  # e.g. a reward model path
            inputs[f"reward:{ref}"] = self._hash_one(ref)
        return {"config_hash": stable_hash(stage.config()), "inputs": inputs}

    def _status(self, stage: Stage, rerun: set[str]) -> tuple[str, str]:
        upstream = sorted({ref.stage for ref in stage.refs()} & rerun)
        if upstream:
            return "run", f"upstream stage {', '.join(upstream)} re-runs"
        manifest = read_manifest(self.stage_dir(stage.id))
        if manifest is None:
            return "run", "not run yet" if not (self.stage_dir(stage.id) / STARTED).exists() else "did not finish"
        current = self.fingerprint(stage)
        if manifest.get("config_hash") != current["config_hash"]:
            return "run", "its configuration changed"
        recorded = manifest.get("input_hashes", {})
        changed = [name for name, h in current["inputs"].items() if recorded.get(name) != h]
        if changed:
            return "run", f"input {', '.join(changed)} changed"
        missing = [name for name, p in self.outputs(stage).items()
                   if not p.exists() and name not in stage.spec.optional_outputs]
        if missing:
            return "run", f"output {', '.join(missing)} is missing"
        return "skip", "up to date"

    def plan(self) -> list[Planned]:
        ids = [s.id for s in self.recipe.stages]
        start = ids.index(self.start_from) if self.start_from else None
        plan: list[Planned] = []
        rerun: set[str] = set()
        for index, stage in enumerate(self.recipe.stages):
            if self.only is not None:
                action, reason = ("run", "selected with --only") if stage.id == self.only else ("skip", "not selected")
            elif start is not None and index >= start:
                action, reason = "run", "selected with --from"
            elif start is not None:
                action, reason = "skip", "before --from"
            else:
                action, reason = self._status(stage, rerun)
            if action == "run":
                rerun.add(stage.id)
            plan.append(Planned(stage, action, reason, self.resolve_inputs(stage), self.outputs(stage)))
        return plan

    # --- running ----------------------------------------------------------------------------------
    def _check_selection(self, plan: list[Planned]) -> None:
        """With --only/--from, the stages they skip must have finished, or their outputs do not exist."""
        running = {p.stage.id for p in plan if p.action == "run"}
        for planned in plan:
            if planned.action != "run":
                continue
            for ref in planned.stage.refs():
                if ref.stage not in running and read_manifest(self.stage_dir(ref.stage)) is None:
                    raise RunError(f"stage '{planned.stage.id}' needs {ref}, but stage '{ref.stage}' has not "
                                   f"completed in {self.run_dir}; run it first (drop --only/--from)")

    def run(self) -> list[Planned]:
        plan = self.plan()
        if dist.is_main():
            self.hashes.save()
        self._check_selection(plan)
        for planned in plan:
            if planned.action == "skip":
                logger.info("stage %s (%s): skipped, %s", planned.stage.id, planned.stage.kind, planned.reason)
                continue
            logger.info("stage %s (%s): running, %s", planned.stage.id, planned.stage.kind, planned.reason)
            self.execute(planned)
        return plan

    def _prepare_dir(self, stage: Stage, fingerprint: dict[str, Any]) -> bool:
        """Make the stage folder ready (main rank); True on every rank when an interrupted run of the same
        config may be resumed."""
        stage_dir = self.stage_dir(stage.id)
        resume = False
        if dist.is_main():
            (stage_dir / MANIFEST).unlink(missing_ok=True)
            try:
                resume = json.loads((stage_dir / STARTED).read_text(encoding="utf-8")) == fingerprint
            except (OSError, ValueError):
                resume = False
            if not resume and stage_dir.exists():
                shutil.rmtree(stage_dir)  # outputs of another config must not mix with this run's
            # A new run folder is closed to other users: its stages write patient text (candidates, scored
            # answers, generations, sample tables). A folder the user made already keeps its mode.
            stage_dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            stage_dir.mkdir(exist_ok=True)
            atomic_write_json(stage_dir / STARTED, fingerprint)
        return bool(dist.broadcast(resume))  # also the barrier: no rank starts before the folder is ready

    def _check_optional_inputs(self, stage: Stage) -> None:
        """A reference to an output its stage writes only on request (e.g. `merged`) must exist by now."""
        for ref in stage.refs():
            upstream = self.recipe.stage(ref.stage)
            if ref.output in upstream.spec.optional_outputs and not Path(self._ref_path(ref)).exists():
                raise RunError(f"stage '{stage.id}' reads {ref}, but stage '{ref.stage}' did not write its "
                               f"'{ref.output}' output (it writes it only when asked: see its args, e.g. merge: true)")

    def execute(self, planned: Planned) -> dict[str, Any]:
        stage = planned.stage
        self._check_optional_inputs(stage)
        stage_dir = self.stage_dir(stage.id)
        fingerprint = self.fingerprint(stage)
        resume = self._prepare_dir(stage, fingerprint)
        seed = stage.trainer.get("seed", getattr(stage.args, "seed", self.recipe.defaults.get("seed", 42)))
        ctx = StageContext(
            stage_id=stage.id, kind=stage.kind, stage_dir=stage_dir, run_dir=self.run_dir,
            recipe_name=self.recipe.name, seed=seed, trainer=dict(stage.trainer),
            trainer_defaults=stage.spec.default_trainer(), callbacks=stage.callbacks,
            reward=self._resolve_component(stage.reward), outputs=planned.outputs, resume=resume,
        )
        if dist.is_main():
            (stage_dir / FAILED).unlink(missing_ok=True)
            atomic_write_json(stage_dir / RUNNING, {"host": socket.gethostname(), "pid": os.getpid(),
                                                    "started_at": datetime.now(timezone.utc).isoformat()})
        log_name = "stage.log" if dist.world_size() == 1 else f"stage.rank{dist.rank()}.log"
        handler = logging.FileHandler(stage_dir / log_name, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
        started_at = datetime.now(timezone.utc)
        t0 = time.monotonic()
        tracker = None
        try:
            if self.recipe.wandb is not None and dist.is_main():
                tracker = StageRun(self.recipe.wandb, self.recipe.name, stage.id, stage.kind, stage.config(),
                                   self.run_dir)
                ctx.metrics.sinks.append(tracker.log)
                ctx.metrics.table_sinks.append(tracker.log_table)
            runs_here = stage.spec.ranks == "all" or dist.is_main()
            metrics = (stage.spec.run(ctx, planned.inputs, stage.args) or {}) if runs_here else {}
        except Exception as exc:
            if tracker is not None:
                tracker.finish(None, failed=True)
            where = f" on rank {dist.rank()}" if dist.world_size() > 1 else ""
            error = RunError(f"stage '{stage.id}' ({stage.kind}) failed{where}: {type(exc).__name__}: {exc}")
            if dist.is_main():
                _mark_failed(stage_dir, error)
            raise error from exc
        finally:
            logging.getLogger().removeHandler(handler)
            handler.close()
            dist.reset_process_state()  # free the stage's models and DeepSpeed/accelerate state
        if not dist.is_main():
            dist.barrier()  # the main rank writes the manifest; nobody starts the next stage before it exists
            return {}
        missing = [f"{name} ({path})" for name, path in planned.outputs.items()
                   if not path.exists() and name not in stage.spec.optional_outputs]
        if missing:
            error = RunError(f"stage '{stage.id}' ({stage.kind}) finished without writing its output "
                             f"{', '.join(missing)}")
            _mark_failed(stage_dir, error)
            raise error
        duration = time.monotonic() - t0
        manifest = {
            "id": stage.id,
            "kind": stage.kind,
            "recipe": {"path": str(self.recipe.path), "name": self.recipe.name},
            "config_hash": fingerprint["config_hash"],
            "config": redact(stage.config()),
            # What the trainer config was built from (rlmed < stage < recipe, plus what the stage derived and
            # rlmed set for this machine): enough to rebuild it with the versions below.
            "trainer_fields": redact(ctx.trainer_fields) if ctx.trainer_fields is not None else None,
            "inputs": {name: describe_input(value) for name, value in planned.inputs.items()},
            "input_hashes": fingerprint["inputs"],
            "outputs": {name: str(path) for name, path in planned.outputs.items()},
            "metrics": metrics,
            "versions": {**package_versions(), "rlmed": __version__},
            "git": git_revision(self.recipe.path),
            "resumed": resume,
            "world_size": dist.world_size(),
            "started_at": started_at.isoformat(),
            "ended_at": datetime.now(timezone.utc).isoformat(),
            "duration_s": round(duration, 3),
        }
        atomic_write_json(stage_dir / MANIFEST, manifest)
        (stage_dir / RUNNING).unlink(missing_ok=True)
        self.hashes.save()
        if tracker is not None:
            tracker.finish({**metrics, "duration_s": manifest["duration_s"]})
        dist.barrier()
        shown = [k for k in SUMMARY_KEYS if k in metrics] or [k for k, v in metrics.items() if isinstance(v, (int, float))]
        summary = ", ".join(f"{k}={_short(metrics[k])}" for k in shown)
        logger.info("stage %s (%s) done in %.1fs%s; outputs in %s", stage.id, stage.kind, duration,
                    f": {summary}" if summary else "", stage_dir)
        return manifest


def _mark_failed(stage_dir: Path, error: Exception) -> None:
    """failed.json (the redacted error) in place of running.json, for `rlmed status`."""
    record = {"error": redact(str(error)), "at": datetime.now(timezone.utc).isoformat()}
    atomic_write_json(stage_dir / FAILED, record)
    (stage_dir / RUNNING).unlink(missing_ok=True)


def _short(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
