"""What every trainer-based stage shares: its trl/transformers config, callbacks, resume and final metrics.

Stages hand a trl/transformers trainer its config and do not re-implement training. This module fills the
config fields rlmed owns (where checkpoints go) and the declared defaults under the user's `trainer:` block,
turns bf16/fp16 off where there is no CUDA, and resumes from the stage's last checkpoint after a crash.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from rlmed import dist
from rlmed.artifacts import last_complete_checkpoint
from rlmed.components import build_component, import_object
from rlmed.stages.base import StageContext

logger = logging.getLogger(__name__)
CHECKPOINTS = "checkpoints"


def trainer_config(ctx: StageContext, config_path: str, has_eval: bool, **derived: Any) -> Any:
    """Build the config class at `config_path` from rlmed's and the stage's declared defaults
    (`ctx.trainer_defaults`), the fields the stage derives from its args (`derived`, e.g. ppo's steps from its
    rollouts) and the recipe's `trainer:` block, in that order. The fields used are kept in `ctx.trainer_fields`
    for the manifest."""
    import torch

    fields: dict[str, Any] = {
        "output_dir": str(ctx.stage_dir / CHECKPOINTS),
        "seed": ctx.seed,
        "eval_strategy": "steps" if has_eval else "no",
        **ctx.trainer_defaults,
        **derived,
        **ctx.trainer,
    }
    _refuse_direct_reporting(ctx.stage_id, fields.get("report_to"))
    if "use_liger_kernel" in fields:
        fields["use_liger_kernel"] = liger_setting(fields["use_liger_kernel"], ctx.stage_id)
    if not has_eval and fields.get("eval_strategy") not in (None, "no"):
        logger.warning("stage %s: no validation data, so eval_strategy=%s is turned off", ctx.stage_id,
                       fields["eval_strategy"])
        fields["eval_strategy"] = "no"
    if not torch.cuda.is_available():
        asked = [name for name in ("bf16", "fp16") if fields.get(name)]
        if asked or "bf16" not in ctx.trainer:
            logger.info("no CUDA device: training in float32 (bf16/fp16 off%s)",
                        f"; the recipe asked for {', '.join(asked)}" if asked else "")
        fields["bf16"] = False
        fields["fp16"] = False
        fields.setdefault("dataloader_pin_memory", False)  # pinning needs an accelerator; it only warns here
        if dist.world_size() > 1 and not fields.get("deepspeed"):
            # Without DeepSpeed, accelerate takes CPU ranks for one process each (each would train alone);
            # use_cpu makes them one data-parallel (gloo) job.
            fields.setdefault("use_cpu", True)
    config_cls = import_object(config_path)
    current_names(fields, config_cls)
    ctx.trainer_fields = dict(sorted(fields.items()))
    return config_cls(**fields)


# Trainer fields transformers renamed; the old names still work there but warn on every stage.
RENAMED_FIELDS = (("gradient_checkpointing", "activation_checkpointing"),
                  ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs"))


def current_names(fields: dict[str, Any], config_cls: type) -> None:
    """Give renamed trainer fields their current names where the installed transformers has them: the ones a
    recipe or stage writes, and the old-named defaults of the config class itself (trl's configs still default
    `gradient_checkpointing`), so a run prints no deprecation warning it could not act on. With an older
    transformers (no new name) the fields stay as written."""
    import dataclasses

    defaults = {f.name: f.default for f in dataclasses.fields(config_cls)}
    for old, new in RENAMED_FIELDS:
        if new not in defaults:
            continue
        if old in fields and new not in fields:
            fields[new] = fields.pop(old)
        elif old in fields:
            fields.pop(old)  # the new name, given too, wins (as in transformers)
        if new not in fields and defaults.get(new) is None and defaults.get(old) not in (None, dataclasses.MISSING):
            fields[new] = defaults[old]


def _refuse_direct_reporting(stage_id: str, report_to: Any) -> None:
    """Trainer integrations (W&B, TensorBoard, MLflow...) upload what they are given past rlmed's masking: trl's
    log_completions sends prompts and completions, patient text, unmasked. rlmed logs to W&B itself, masked,
    through the recipe's `wandb` block."""
    targets = [report_to] if isinstance(report_to, str) else list(report_to or [])
    direct = [t for t in targets if str(t).lower() not in ("none", "")]
    if direct:
        raise ValueError(f"stage {stage_id}: trainer.report_to={report_to!r} would send the trainer's logs (and, "
                         "with log_completions, prompts and completions unmasked) past rlmed's de-identification; "
                         "remove trainer.report_to and use the recipe's `wandb` block, which masks patient text")


def liger_available() -> bool:
    """Liger's fused kernels are Triton kernels: they need the package and a CUDA device."""
    import importlib.util

    import torch

    return importlib.util.find_spec("liger_kernel") is not None and torch.cuda.is_available()


def liger_setting(value: Any, stage_id: str) -> bool:
    """`use_liger_kernel`: auto -> on where Liger is installed and usable; true where it is not -> a clear error
    now, rather than transformers' ImportError after the model has loaded."""
    import importlib.util

    if value == "auto":
        on = liger_available()
        logger.info("stage %s: use_liger_kernel auto -> %s", stage_id,
                    "on" if on else "off (needs the liger-kernel package and a CUDA device)")
        return on
    if value and importlib.util.find_spec("liger_kernel") is None:
        raise ValueError(f"stage {stage_id}: trainer.use_liger_kernel is true but the liger-kernel package is not "
                         "installed; `pip install liger-kernel`, or set it to auto (on only where installed)")
    return bool(value)


def metrics_callback(ctx: StageContext) -> Any:
    """A trainer callback that appends every log event of the trainer to the stage's metrics.jsonl."""
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and state.is_world_process_zero:
                ctx.metrics.log(dict(logs), step=state.global_step)

    return MetricsCallback()


# Shown in the progress bar's postfix; everything else logged goes only to metrics.jsonl (and W&B).
BAR_KEYS = ("loss", "eval_loss", "learning_rate")


def _quiet_progress(trainer: Any) -> None:
    """Replace the Trainer's progress bar, which prints every log dict on its own line (one per step with
    logging_steps=1), by the same bar showing the latest loss in its postfix."""
    from transformers.trainer_callback import ProgressCallback

    class ProgressWithLoss(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and self.training_bar is not None and logs:
                shown = {k: f"{logs[k]:.4g}" for k in BAR_KEYS if isinstance(logs.get(k), (int, float))}
                self.training_bar.set_postfix(shown, refresh=False)

    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(ProgressWithLoss())


def callbacks(ctx: StageContext) -> list[Any]:
    """The metrics logger plus the recipe's own `callbacks:` components."""
    return [metrics_callback(ctx)] + [build_component(spec) for spec in ctx.callbacks]


def last_checkpoint(ctx: StageContext) -> str | None:
    """The newest `checkpoint-N` of this stage that holds a complete trainer state."""
    found = last_complete_checkpoint(ctx.stage_dir / CHECKPOINTS)
    return str(found) if found else None


def train(ctx: StageContext, trainer: Any) -> dict[str, Any]:
    """Run `trainer.train()`, resuming when the stage was interrupted with this config; return final metrics."""
    _quiet_progress(trainer)
    resume_from = last_checkpoint(ctx) if ctx.resume else None
    if resume_from:
        step = int(Path(resume_from).name.split("-")[1])
        logger.info("stage %s: resuming from %s (step %d)", ctx.stage_id, resume_from, step)
        ctx.metrics.truncate_after(step)
    elif ctx.resume:
        logger.info("stage %s: interrupted before its first checkpoint; starting over", ctx.stage_id)
    result = trainer.train(resume_from_checkpoint=resume_from)
    metrics: dict[str, Any] = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    metrics["global_step"] = result.global_step
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    if losses:
        metrics["first_loss"], metrics["last_loss"] = losses[0], losses[-1]
    if trainer.eval_dataset is not None:
        evaluated = trainer.evaluate()
        ctx.metrics.log(evaluated, step=trainer.state.global_step)
        metrics.update({k: v for k, v in evaluated.items() if k.startswith("eval_")})
        if "eval_loss" in evaluated and math.isfinite(evaluated["eval_loss"]):
            metrics["eval_perplexity"] = math.exp(min(evaluated["eval_loss"], 50.0))
    if resume_from:
        metrics["resumed_from_step"] = int(Path(resume_from).name.split("-")[1])
    return metrics


def with_lora(model: Any, settings: Any, task_type: str = "CAUSAL_LM") -> tuple[Any, dict[str, int]]:
    """`model` wrapped with LoRA adapters when `settings` is given; parameter counts for the manifest."""
    if settings is not None:
        from rlmed.models.lora import wrap

        model = wrap(model, settings, task_type)
    # Under ZeRO-3 a parameter partitioned at load has numel() 0 here; ds_numel is its full size.
    trainable = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)
    total = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    return model, {"trainable_parameters": trainable, "total_parameters": total}


def save_model(trainer: Any, tokenizer: Any, out_dir: Path, merged_dir: Path | None = None,
               scalar_head: bool = False) -> None:
    """The stage's `model` artifact: a folder any later stage (or transformers) loads by path — a full model,
    or for LoRA an adapter folder recording its base; with `merged_dir`, also base + adapter merged there.

    Every rank calls this: under ZeRO-3 the full weights are gathered from all ranks (the shipped configs set
    stage3_gather_16bit_weights_on_model_save), and the Trainer writes them from the main rank only.
    """
    trainer.save_model(str(out_dir))
    if not dist.is_main():
        return
    tokenizer.save_pretrained(str(out_dir))
    if merged_dir is not None:
        from rlmed.models.lora import save_merged

        with unpartitioned_loading(trainer):  # the merge loads the base afresh
            save_merged(out_dir, merged_dir, tokenizer, scalar_head=scalar_head)


def unpartitioned_loading(trainer: Any) -> Any:
    """Inside, `from_pretrained` loads whole models even while this trainer's ZeRO-3 config is active (it
    would otherwise partition them across ranks, which a main-rank-only load must not do)."""
    from reward.model import whole_weights

    return whole_weights()
