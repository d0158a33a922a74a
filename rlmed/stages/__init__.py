"""Stage kinds: a recipe's `kind:` names one of these, or the dotted path of a user's module with a `SPEC`."""

from __future__ import annotations

import importlib

from rlmed.stages.base import StageSpec

BUILTIN = {
    "tiny_model": "rlmed.stages.tiny_model",
    "pretrain": "rlmed.stages.pretrain",
    "sft": "rlmed.stages.sft",
    "ai_feedback": "rlmed.stages.ai_feedback",
    "reward_model": "rlmed.stages.reward_model",
    "grpo": "rlmed.stages.grpo",
    "rloo": "rlmed.stages.rloo",
    "ppo": "rlmed.stages.ppo",
    "dpo": "rlmed.stages.dpo",
    "kto": "rlmed.stages.kto",
    "mole": "rlmed.stages.mole",
    "evaluate": "rlmed.stages.evaluate",
    "kb_instructions": "rlmed.stages.kb_instructions",
    "rubrics": "rlmed.stages.rubrics",
}


class UnknownStageKind(ValueError):
    pass


def get_spec(kind: str) -> StageSpec:
    """The StageSpec of a built-in kind, or of `package.module` holding `SPEC` (a user's own stage)."""
    module_name = BUILTIN.get(kind)
    if module_name is None:
        if "." not in kind:
            raise UnknownStageKind(f"unknown stage kind '{kind}' (built-in kinds: {', '.join(BUILTIN)})")
        module_name = kind
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownStageKind(f"stage kind '{kind}': cannot import {module_name} ({exc})") from exc
    spec = getattr(module, "SPEC", None)
    if not isinstance(spec, StageSpec):
        raise UnknownStageKind(f"stage kind '{kind}': module {module_name} has no SPEC = StageSpec(...)")
    return spec
