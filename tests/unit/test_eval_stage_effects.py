"""What each stage did: nearest evaluated ancestor through the manifests, targets, reward-model Wilson lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlmed.eval.bootstrap import wilson
from rlmed.eval.generations import model_values, saved_row, summarise_model
from rlmed.eval.stage_effects import stage_effects

PROMPT = [{"role": "user", "content": "孩子发烧怎么办？"}]
KINDS = {"dialogues": "generation", "mcq": "choice"}


def _stage(run_dir: Path, stage_id: str, kind: str, inputs: dict, metrics: dict, hour: int,
           resolved: bool = False) -> None:
    folder = run_dir / stage_id
    folder.mkdir(parents=True)
    manifest = {"id": stage_id, "kind": kind, "metrics": metrics, "started_at": f"2025-01-01T{hour:02d}:00:00+00:00"}
    if resolved:  # references resolved to their paths, as the runner's manifest "inputs" has them
        manifest["inputs"] = {k: str(run_dir / v[1:].replace(".", "/")) if v.startswith("$") else v
                              for k, v in inputs.items()}
    else:  # as written in the recipe
        manifest["inputs"] = inputs
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def _rows(reward: float, correct: int) -> list[dict]:
    out = []
    for i in range(20):
        row = saved_row("dialogues", i, "generation", PROMPT, "多喝水" if i % 2 else "观察", reference="多喝水")
        row.update(reward=reward + 0.01 * i, reward_parts={"rules.referral": float(i < 10 * reward)})
        out.append(row)
    out += [saved_row("mcq", i, "choice", PROMPT, "A" if i < correct else "B", options=["甲", "乙"], answer_key="A")
            for i in range(20)]
    return out


def make_run(tmp_path: Path, resolved: bool = False) -> Path:
    """base → cpt → sft → feedback, rm → ppo → eval; evaluated: base, sft, ppo (cpt is not)."""
    run_dir = tmp_path / "run"
    _stage(run_dir, "base", "tiny_model", {}, {"vocab_size": 2048}, 0, resolved)
    _stage(run_dir, "cpt", "pretrain", {"model": "$base.model"}, {"eval_loss": 2.5}, 1, resolved)
    _stage(run_dir, "sft", "sft", {"model": "$cpt.model"}, {"eval_loss": 1.5}, 2, resolved)
    _stage(run_dir, "feedback", "ai_feedback", {"model": "$sft.model"}, {"pairs": 120, "score_mean": 0.71}, 3,
           resolved)
    _stage(run_dir, "rm", "reward_model", {"model": "$sft.model"},
           {"eval_pairwise_accuracy": 0.8, "eval_pairs": 50}, 4, resolved)
    _stage(run_dir, "ppo", "ppo", {"model": "$sft.model", "value_model": "$rm.model"}, {"last_reward_mean": 0.5}, 5,
           resolved)
    _stage(run_dir, "eval", "evaluate", {}, {}, 6, resolved)
    return run_dir


def results_and_values(run_dir: Path):
    saved = {"base": _rows(0.1, 5), "sft": _rows(0.2, 15), "ppo": _rows(0.7, 15)}
    values = {m: model_values(r, KINDS) for m, r in saved.items()}
    summaries = {m: summarise_model(v) for m, v in values.items()}
    results = {"baseline": "base",
               "models": {m: {"path": str(run_dir / m / "model"), "stage": m} for m in saved},
               "eval_sets": {"dialogues": {"kind": "generation", "rows": 20}, "mcq": {"kind": "choice", "rows": 20}},
               "metrics": {m: s[0] for m, s in summaries.items()}, "reward": {m: s[1] for m, s in summaries.items()}}
    return results, values


@pytest.mark.parametrize("resolved", [False, True], ids=["written", "resolved"])
def test_each_stage_is_compared_with_its_nearest_evaluated_ancestor(tmp_path, resolved):
    run_dir = make_run(tmp_path, resolved)
    results, values = results_and_values(run_dir)
    lines = {e["stage"]: e for e in stage_effects(run_dir, "eval", results, values, seed=3)}
    assert list(lines) == ["base", "cpt", "sft", "feedback", "rm", "ppo"]  # the run's order, no evaluate stage
    # sft ← cpt ← base: cpt was not evaluated, so sft is compared with base, on the first choice set's accuracy.
    sft = lines["sft"]
    assert (sft["model"], sft["compared_with"], sft["target"]) == ("sft", "base", "mcq/accuracy")
    assert (sft["value"], sft["compared_value"], sft["change"]) == (75.0, 25.0, 50.0)
    assert sft["low"] > 0 and sft["verdict"] == "better" and sft["method"] == "paired bootstrap"
    # ppo ← sft (the value model's reward model is not a policy); RL stages: the mean reward.
    ppo = lines["ppo"]
    assert (ppo["compared_with"], ppo["target"]) == ("sft", "dialogues/reward_mean")
    assert ppo["change"] == pytest.approx(0.5) and ppo["low"] == pytest.approx(0.5) and ppo["verdict"] == "better"
    # The base model has nothing before it: its value, no comparison, no verdict.
    assert lines["base"]["compared_with"] is None and lines["base"]["verdict"] == "—"
    assert lines["base"]["value"] == 25.0 and lines["base"]["change"] is None
    # Stages with no evaluated model: what they produced, no verdict.
    assert lines["cpt"]["produced"] == {"eval_loss": 2.5} and lines["cpt"]["verdict"] == "—"
    assert lines["feedback"]["produced"] == {"pairs": 120, "score_mean": 0.71}
    # The reward model against chance, Wilson interval over its 50 held-out pairs.
    rm = lines["rm"]
    low, high = wilson(40, 50)
    assert (rm["target"], rm["compared_with"], rm["n"]) == ("eval_pairwise_accuracy", "chance (0.5)", 50)
    assert rm["change"] == pytest.approx(0.3) and rm["low"] == pytest.approx(low - 0.5)
    assert rm["high"] == pytest.approx(high - 0.5) and rm["verdict"] == "better"


def test_targets_choose_the_measure_and_the_interval_matches_the_baseline_comparison(tmp_path):
    from rlmed.eval.comparisons import compare_models

    run_dir = make_run(tmp_path)
    results, values = results_and_values(run_dir)
    lines = {e["stage"]: e for e in stage_effects(run_dir, "eval", results, values, seed=3,
                                                  targets={"sft": "dialogues/reward.rules.referral"})}
    sft = lines["sft"]
    assert sft["target"] == "dialogues/reward.rules.referral" and sft["compared_with"] == "base"
    # The same draws as the sft-vs-baseline comparison on that set: the same interval, to the bit.
    expected = compare_models(values["sft"], values["base"], 3)["dialogues/reward.rules.referral"]
    assert (sft["change"], sft["low"], sft["high"], sft["verdict"]) == \
        (expected["diff"], expected["low"], expected["high"], expected["verdict"])


def test_a_reward_model_without_held_out_pairs_gets_no_verdict(tmp_path):
    run_dir = tmp_path / "run"
    _stage(run_dir, "rm", "reward_model", {"model": "Qwen/Qwen2.5-0.5B"}, {"train_pairs": 30}, 0)
    results, values = results_and_values(run_dir)
    (line,) = stage_effects(run_dir, "eval", results, values, seed=3)
    assert line["verdict"] == "—" and line["produced"] == {"train_pairs": 30} and line["low"] is None
