"""What each stage of a run did, measured where it can be and said plainly where it cannot.

One entry per stage of the run (in the run's order, from the stages' manifest.json; evaluate stages left out),
computed by the evaluate stage into results.json's `stage_effects` and recomputed by `rlmed report --recompute`:

- a stage whose model was evaluated: its target measure (args.targets[stage], else a default by kind: the first
  generation set's mean reward for ppo/grpo/rloo/dpo/mole when a reward source scored it, else its ROUGE-L;
  the first choice set's accuracy for anything else, else the first generation set's ROUGE-L) against its
  nearest evaluated ancestor (the models its manifest's inputs reference, `$id.model` / `$id.merged` or their
  resolved paths, followed transitively: sft ← cpt ← base compares sft with base when cpt was not evaluated),
  with the paired bootstrap of that pair of models (rlmed.eval.comparisons); no evaluated ancestor: no verdict;
- a reward_model stage: its held-out pairwise accuracy against chance (0.5), with the Wilson score interval of a
  proportion over its held-out pairs;
- anything else (tiny_model, kb_instructions, ai_feedback, a stage whose model was not evaluated): what it
  produced, from its manifest metrics, and no verdict: a verdict needs an interval.

Entry: {"stage", "kind", "model", "target", "compared_with", "value", "compared_value", "change", "low", "high",
"n", "verdict", "method", "note", "produced"} ("change", "low", "high": the change and its 95% interval; None
where not measured; "verdict": better / no clear change / worse / too few rows / "—").
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from rlmed.eval.bootstrap import BETTER, RESAMPLES, UNCLEAR, WORSE, wilson
from rlmed.eval.comparisons import compare_models
from rlmed.eval.generations import SetValues
from rlmed.eval.report import EVALUATE_KIND, read_stages

logger = logging.getLogger(__name__)

NOT_MEASURED = "—"
CHANCE = 0.5
RL_KINDS = ("ppo", "grpo", "rloo", "dpo", "mole")  # aimed at the reward (or the preferences behind it)
REWARD_MODEL_KIND = "reward_model"
MODEL_OUTPUTS = ("model", "merged")
# What a stage's line shows when nothing here measures it: the manifest metrics that say what it produced.
PRODUCED = {
    "tiny_model": ("vocab_size", "hidden_size", "num_layers"),
    "kb_instructions": ("pairs_written", "rows_read"),
    "pretrain": ("eval_loss", "train_tokens"),
    "sft": ("eval_loss", "train_dialogues"),
    "ai_feedback": ("pairs", "score_mean", "candidates"),
    "reward_model": ("eval_pairwise_accuracy", "eval_pairs", "train_pairs"),
    "ppo": ("heldout_reward_start", "heldout_reward_end", "last_reward_mean"),
    "grpo": ("heldout_reward_start", "heldout_reward_end"),
    "rloo": ("heldout_reward_start", "heldout_reward_end"),
    "dpo": ("eval_rewards/accuracies", "eval_rewards/margins", "train_pairs"),
    "mole": ("eval_loss", "train_dialogues"),
}
_REF = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_-]*)\.(model|merged)$")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return None
    return float(value)


# --- which model is which stage's, and who came before ----------------------------------------------------
def _path_node(text: str) -> tuple[str, ...]:
    """A model path outside the run (a folder, a Hub id): the same folder written two ways is one node."""
    p = Path(text)
    return ("path", str(p.resolve()) if p.exists() else text)


def model_nodes(results: dict[str, Any], stage_ids: set[str]) -> dict[str, tuple[str, ...]]:
    """{evaluated model: ("stage", id, output)} for run_dir/<id>/model|merged, else ("path", the path)."""
    nodes = {}
    for name, info in (results.get("models") or {}).items():
        path = str((info or {}).get("path") or name)
        p = Path(path)
        if p.name in MODEL_OUTPUTS and p.parent.name in stage_ids:
            nodes[name] = ("stage", p.parent.name, p.name)
        else:
            nodes[name] = _path_node(path)
    return nodes


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []  # data sources ({path, weight, ...}) are data, never a model


def input_nodes(manifest: dict[str, Any], stage_ids: set[str]) -> list[tuple[str, ...]]:
    """The models a stage read, in input order: `$id.model` / `$id.merged` as written (config.inputs), their
    resolved paths (inputs), and other model paths (a Hub id, a folder) as ("path", text)."""
    written = ((manifest.get("config") or {}).get("inputs") or {})
    resolved = manifest.get("inputs") or {}
    found: list[tuple[str, ...]] = []
    for inputs in (written, resolved):
        for value in inputs.values() if isinstance(inputs, dict) else ():
            for text in _strings(value):
                ref, p = _REF.match(text.strip()), Path(text)
                if ref:
                    node: tuple[str, ...] = ("stage", ref.group(1), ref.group(2))
                elif p.name in MODEL_OUTPUTS and p.parent.name in stage_ids:
                    node = ("stage", p.parent.name, p.name)
                else:
                    node = _path_node(text)
                if node not in found:
                    found.append(node)
    return found


def _evaluated(node: tuple[str, ...], nodes: dict[str, tuple[str, ...]]) -> str | None:
    """The evaluated model that is `node` (a stage's other output counts: merged holds the adapter's weights)."""
    exact = [m for m, n in nodes.items() if n == node]
    if exact:
        return exact[0]
    if node[0] == "stage":
        return next((m for m, n in nodes.items() if n[0] == "stage" and n[1] == node[1]), None)
    return None


def nearest_evaluated_ancestor(stage_id: str, manifests: dict[str, dict[str, Any]],
                               nodes: dict[str, tuple[str, ...]]) -> str | None:
    """The evaluated model closest upstream of `stage_id` (breadth first over its inputs' model references, in
    input order), skipping reward models (they score answers, they do not write them)."""
    stage_ids = set(manifests)
    queue = input_nodes(manifests.get(stage_id, {}), stage_ids)
    seen: set[tuple[str, ...]] = set()
    while queue:
        node = queue.pop(0)
        if node in seen or node[:2] == ("stage", stage_id):
            continue
        seen.add(node)
        upstream_kind = (manifests.get(node[1]) or {}).get("kind") if node[0] == "stage" else None
        model = _evaluated(node, nodes)
        if model is not None and upstream_kind != REWARD_MODEL_KIND:
            return model
        if node[0] == "stage" and node[1] in manifests:
            queue += input_nodes(manifests[node[1]], stage_ids)
    return None


# --- the entries ----------------------------------------------------------------------------------------------
def default_target(kind: str, results: dict[str, Any]) -> str | None:
    """The metric a stage of `kind` is judged on (module docstring); None when no eval set can measure it."""
    sets = results.get("eval_sets") or {}
    first = {k: next((s for s, info in sets.items() if (info or {}).get("kind") == k), None)
             for k in ("generation", "choice", "hitrate")}
    gen = first["generation"]
    scored = gen is not None and any(_number((r or {}).get(f"{gen}/reward_mean")) is not None
                                     for r in (results.get("reward") or {}).values())
    if kind in RL_KINDS and gen is not None:
        return f"{gen}/reward_mean" if scored else f"{gen}/rouge_l"
    if first["choice"] is not None:
        return f"{first['choice']}/accuracy"
    if gen is not None:
        return f"{gen}/rouge_l"
    return f"{first['hitrate']}/hit_rate_1" if first["hitrate"] is not None else None


def _value(results: dict[str, Any], model: str, key: str) -> float | None:
    reward, metrics = (results.get("reward") or {}).get(model) or {}, (results.get("metrics") or {}).get(model) or {}
    return _number({**reward, **metrics}.get(key))


def _line(stage: Any, **fields: Any) -> dict[str, Any]:
    base = {"stage": stage.id, "kind": stage.kind, "model": None, "target": None, "compared_with": None,
            "value": None, "compared_value": None, "change": None, "low": None, "high": None, "n": None,
            "verdict": NOT_MEASURED, "method": None, "note": None, "produced": None}
    return {**base, **fields}


def produced(manifest: dict[str, Any] | None, kind: str) -> dict[str, float]:
    """The manifest metrics that say what a stage made (PRODUCED for its kind, else its first numbers)."""
    metrics = (manifest or {}).get("metrics") or {}
    keys = [k for k in PRODUCED.get(kind, ()) if _number(metrics.get(k)) is not None]
    if not keys:
        keys = sorted(k for k, v in metrics.items() if _number(v) is not None)[:3]
    return {k: metrics[k] for k in keys}


def reward_model_line(stage: Any) -> dict[str, Any]:
    """Held-out pairwise accuracy against chance, with the Wilson 95% interval over its held-out pairs."""
    metrics = (stage.manifest or {}).get("metrics") or {}
    accuracy, pairs = _number(metrics.get("eval_pairwise_accuracy")), _number(metrics.get("eval_pairs"))
    if accuracy is None or not pairs:
        return _line(stage, produced=produced(stage.manifest, stage.kind),
                     note="no held-out pairs (validation_fraction 0): not measured here")
    n = int(pairs)
    low, high = wilson(round(accuracy * n), n)
    said = BETTER if low > CHANCE else WORSE if high < CHANCE else UNCLEAR
    return _line(stage, target="eval_pairwise_accuracy", compared_with=f"chance ({CHANCE})", value=accuracy,
                 compared_value=CHANCE, change=accuracy - CHANCE, low=low - CHANCE, high=high - CHANCE, n=n,
                 verdict=said, method="Wilson score interval")


def model_line(stage: Any, model: str, ancestor: str | None, target: str | None, results: dict[str, Any],
               values: dict[str, dict[str, SetValues]], seed: int, resamples: int) -> dict[str, Any]:
    """An evaluated stage's target against its nearest evaluated ancestor, by the paired bootstrap."""
    if target is None:
        return _line(stage, model=model, produced=produced(stage.manifest, stage.kind),
                     note="no eval set measures this kind of stage")
    value = _value(results, model, target)
    if value is None:
        return _line(stage, model=model, target=target, note=f"'{target}' was not measured for {model}")
    if ancestor is None:
        return _line(stage, model=model, target=target, value=value,
                     note="no evaluated model before it to compare with")
    before = _value(results, ancestor, target)
    found = compare_models(values.get(model, {}), values.get(ancestor, {}), seed, resamples, keys=[target])
    if before is None or target not in found:
        return _line(stage, model=model, target=target, compared_with=ancestor, value=value,
                     note=f"'{target}' was not measured for {ancestor}")
    e = found[target]
    return _line(stage, model=model, target=target, compared_with=ancestor, value=value, compared_value=before,
                 change=e["diff"], low=e["low"], high=e["high"], n=e["n"], verdict=e["verdict"],
                 method="paired bootstrap")


def stage_effects(run_dir: Path, own_id: str, results: dict[str, Any], values: dict[str, dict[str, SetValues]],
                  seed: int, resamples: int = RESAMPLES, targets: dict[str, str] | None = None
                  ) -> list[dict[str, Any]]:
    """One entry per stage of run_dir (module docstring), in the run's order."""
    targets = targets or {}
    stages = [s for s in read_stages(Path(run_dir)) if s.id != own_id and s.kind != EVALUATE_KIND]
    manifests = {s.id: s.manifest or {} for s in stages}
    nodes = model_nodes(results, set(manifests))
    lines = []
    for stage in stages:
        model = _evaluated(("stage", stage.id, "model"), nodes)
        if stage.manifest is None:
            lines.append(_line(stage, note="not finished (no manifest.json)"))
        elif stage.kind == REWARD_MODEL_KIND:
            lines.append(reward_model_line(stage))
        elif model is None:
            lines.append(_line(stage, produced=produced(stage.manifest, stage.kind),
                               note="not measured here: its model, if any, was not evaluated"))
        else:
            target = targets.get(stage.id) or default_target(stage.kind, results)
            ancestor = nearest_evaluated_ancestor(stage.id, manifests, nodes)
            lines.append(model_line(stage, model, ancestor, target, results, values, seed, resamples))
    unknown = sorted(set(targets) - {s.id for s in stages})
    if unknown:
        logger.warning("stage_effects: args.targets names stages not in %s: %s", run_dir, ", ".join(unknown))
    return lines
