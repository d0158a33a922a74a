"""The embedded default recipe, run as the README says (`rlmed run recipes/tiny.yaml`), end to end, and what its
report must prove: each stage moves the model the way it should, beyond noise, and the same stages trained on
shuffled rewards (`--control shuffled-rewards`) do not.

Thresholds leave room for other CPUs, whose float kernels take sampled RL runs down other paths: each learning
claim below held with a wide margin here (docs/benchmarks.md, "The embedded recipe", has the figures).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, read_metrics

pytestmark = pytest.mark.slow

STAGES = 11
ALIGNED = ("ppo", "grpo", "dfpo")
REWARD = "heldout_prompts/reward_mean"
REFERRAL = "heldout_prompts/reward.triage"  # the triage rule: 1 when a danger sign is answered with 急诊
SIMILARITY = "heldout_prompts/reward.similarity"
# Stages the control shares with the real run: configured identically, so copied over and skipped.
UPSTREAM = ("base", "kb", "cpt", "sft")
MIN_TASK_DISTANCE = 0.004  # see test_experts_route_by_task_and_keep_the_alignment
MIN_KEPT_GAIN = 0.75  # share of dfpo's reward gain over sft the experts model keeps (seen 0.91-0.97)


def run(*extra: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["rlmed", "run", "recipes/tiny.yaml", *extra], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def manifest(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / stage / "manifest.json").read_text())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    first = run("--run-dir", str(run_dir))
    assert first.returncode == 0, first.stderr[-3000:]
    return run_dir, first


@pytest.fixture(scope="module")
def results(tiny_run) -> dict:
    return json.loads((tiny_run[0] / "eval" / "results.json").read_text())


@pytest.fixture(scope="module")
def control(tiny_run, tmp_path_factory) -> tuple[Path, dict]:
    """The control run, reusing the real run's stages up to SFT (skipped as up to date), the rest on shuffled
    rewards."""
    run_dir = tmp_path_factory.mktemp("control") / "run"
    for stage in UPSTREAM:
        shutil.copytree(tiny_run[0] / stage, run_dir / stage, symlinks=True)
    done = run("--run-dir", str(run_dir), "--control", "shuffled-rewards")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("skipped, up to date") == len(UPSTREAM)
    return run_dir, json.loads((run_dir / "eval" / "results.json").read_text())


def test_tiny_recipe_runs_end_to_end_and_a_second_run_skips_everything(tiny_run):
    run_dir, first = tiny_run
    for stage, kind in (("base", "tiny_model"), ("kb", "kb_instructions"), ("cpt", "pretrain"), ("sft", "sft")):
        assert manifest(run_dir, stage)["kind"] == kind
        if kind != "kb_instructions":
            assert (run_dir / stage / "model" / "model.safetensors").exists()
    feedback = manifest(run_dir, "feedback")["metrics"]
    assert feedback["candidates"] == 400 * 4 and feedback["failed_scores"] == 0
    ppo = manifest(run_dir, "ppo")
    assert ppo["metrics"]["rewards_unscored"] == 0 and ppo["metrics"]["value_model_from"].endswith("rm/model")
    assert "reward:$rm.model" in ppo["input_hashes"] and (run_dir / "ppo" / "tables" / "samples.jsonl").exists()
    assert manifest(run_dir, "grpo")["metrics"]["rewards_unscored"] == 0
    assert manifest(run_dir, "dfpo")["metrics"]["objective"] == "dfpo"
    assert (run_dir / "experts" / "merged" / "experts" / "mole_config.json").exists()
    assert manifest(run_dir, "kb")["metrics"]["pairs_written"] == 4 * 16 + 4 * 20  # 4 templates each
    for stage in ("cpt", "sft"):
        losses = [r["loss"] for r in read_metrics(run_dir / stage) if "loss" in r]
        assert losses[-1] < 0.6 * losses[0], (stage, losses[0], losses[-1])
    assert "stage sft (sft) done in" in first.stderr  # the one-line stage summary
    # The terminal reads as rlmed's progress: no deprecation notices the user cannot act on, no DeepSpeed "could
    # not detect a GPU" on a CPU machine; the stage logs keep the libraries' detail.
    for noise in ("FutureWarning", "DeprecationWarning", "Setting accelerator to CPU", "is deprecated"):
        assert noise not in first.stderr, noise
    report = (run_dir / "eval" / "report.md").read_text()
    assert report.index("## What each stage did") < report.index("## Models")

    second = run("--run-dir", str(run_dir), timeout=300)
    assert second.returncode == 0
    assert second.stderr.count("skipped, up to date") == STAGES


def test_sft_answers_exam_and_knowledge_questions_that_base_cannot(results):
    sft, base = results["metrics"]["sft"], results["metrics"]["base"]
    # Options scored by log-likelihood: a model that knows nothing is at chance (25 of 100 on 4 options).
    assert results["eval_sets"]["eval_mcq"]["scoring"] == "loglik"
    assert sft["eval_mcq/accuracy"] >= 50 and base["eval_mcq/accuracy"] < 50
    assert sft["eval_kb/hit_rate_1"] > 0 and base["eval_kb/hit_rate_1"] == 0
    effect = next(e for e in results["stage_effects"] if e["stage"] == "sft")
    assert effect["compared_with"] == "base" and effect["verdict"] == "better"


def test_reward_model_ranks_held_out_pairs(tiny_run):
    rm = manifest(tiny_run[0], "rm")["metrics"]
    assert rm["eval_pairs"] >= 40 and rm["eval_pairwise_accuracy"] >= 0.75


@pytest.mark.parametrize("stage", ALIGNED)
def test_alignment_stage_raises_the_feedback_reward_and_the_referral_rate(results, stage):
    vs_sft = results["comparisons"][stage]
    assert vs_sft[REWARD]["low"] > 0, vs_sft[REWARD]  # the paired-bootstrap interval lies above 0
    red_flag = results["breakdowns"]["red_flag"]["true"]["comparisons"][stage][REFERRAL]
    assert red_flag["low"] > 0, red_flag  # more children with a danger sign sent to the emergency department
    assert vs_sft[SIMILARITY]["high"] >= 0, vs_sft[SIMILARITY]  # no significant loss of similarity to doctors
    effect = next(e for e in results["stage_effects"] if e["stage"] == stage)
    assert effect["compared_with"] == "sft" and effect["verdict"] == "better"


def test_experts_route_by_task_and_keep_the_alignment(tiny_run, results):
    experts = manifest(tiny_run[0], "experts")["metrics"]
    # The three tasks' mean gate vectors start equal and must end apart by more than random thirds of the same
    # rows do. The experts stage alone from this recipe's dfpo model (60 steps, 32 probe rows per task): real
    # tasks 0.0099, 0.0065, 0.0066 (seeds 42, 1, 2); task labels shuffled across rows 0.0013, 0.0017, 0.0032.
    # tests/stages/test_mole.py holds the stage's own control.
    assert experts["tasks"] == 3 and experts["routing_task_distance_start"] < 1e-6
    assert experts["routing_task_distance_end"] >= MIN_TASK_DISTANCE, experts
    effect = next(e for e in results["stage_effects"] if e["stage"] == "experts")
    assert effect["compared_with"] == "dfpo", effect
    # The stage learns from doctors' replies, not from the feedback, so it keeps DFPO's alignment rather than adding
    # to it. Five seeds of the stage here (42, 1-4): -0.007 to -0.020 against dfpo, every interval "no clear
    # change" but with its upper end only +0.004 to +0.012: a small, steady cost that another CPU could turn
    # into "worse". What holds with margin: still above sft beyond noise (lower ends +0.163 to +0.175) with most
    # of dfpo's gain kept (91-97% of it).
    vs_sft, dfpo = results["comparisons"]["experts"][REWARD], results["comparisons"]["dfpo"][REWARD]
    assert vs_sft["low"] > 0 and vs_sft["diff"] >= MIN_KEPT_GAIN * dfpo["diff"], (vs_sft, dfpo)


def test_shuffled_rewards_control_shows_no_gain(control, results):
    run_dir, shuffled = control
    rm = manifest(run_dir, "rm")["metrics"]
    assert rm["eval_pairwise_accuracy"] < 0.65  # chance: the pairs carry no preference
    for stage in ALIGNED:
        learned, chance = results["comparisons"][stage][REWARD], shuffled["comparisons"][stage][REWARD]
        # Without the signal the stage moves the reward by at most a third of what it learned with it. (Here the
        # controls came out worse, worse and +0.013 [-0.007, +0.031] for ppo, grpo and dfpo; with another seed
        # dfpo's was +0.028 [+0.006, +0.049]: DPO on shuffled pairs drifts a little, so a strict "interval
        # includes 0" would flip with the machine.)
        assert chance["high"] < learned["low"] / 3, (stage, learned, chance)
