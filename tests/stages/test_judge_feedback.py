"""The LLM judge inside ai_feedback over real HTTP: de-identification, secrets, the cache, a kill mid-scoring."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reward.cache import ChatCache
from tests.conftest import ROOT, write_jsonl, write_recipe
from tests.reward.server import JudgeServer
from tests.stages.conftest import manifest, run_recipe
from tests.stages.test_feedback_sources import pointwise_reply

KEY_ENV = "RLMED_TEST_JUDGE_KEY"
SECRET = "sk-judge-test-4d2c8e1f9a"
PHONE, ID_CARD = "13812345678", "11010120150101123X"


@pytest.fixture
def judge():
    with JudgeServer() as server:
        server.script(then=pointwise_reply)
        yield server


def prompts_file(tmp_path: Path, n: int = 4) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"孩子发烧{38 + i % 3}度，我的电话{PHONE}，身份证{ID_CARD}，怎么办？"}],
             "reference": f"请观察精神状态，超过三天不退请就医。如需回访请拨打{PHONE}。"} for i in range(n)]
    return write_jsonl(tmp_path / "prompts.jsonl", rows)


def stage(tmp_path: Path, model: Path, judge: JudgeServer, **judge_args) -> dict:
    return {"id": "fb", "kind": "ai_feedback", "inputs": {"model": str(model), "prompts": str(prompts_file(tmp_path))},
            "args": {"samples_per_prompt": 2, "max_new_tokens": 16},
            "reward": {"_component_": "reward.judge.LLMJudge", "model": "judge-test", "base_url": judge.base_url,
                       "api_key_env": KEY_ENV, "timeout_s": 10.0, **judge_args}}


def test_judge_sees_no_identifiers_no_secret_leaks_and_a_rerun_is_served_from_cache(tmp_path, tiny_model, judge,
                                                                                   monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, SECRET)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    with caplog.at_level("DEBUG"):
        assert run_recipe(tmp_path, [stage(tmp_path, tiny_model, judge)], wandb={"project": "rlmed-test"}) == 0
    sent = judge.count
    assert sent == 8
    received = json.dumps(judge.received, ensure_ascii=False)
    assert PHONE not in received and ID_CARD not in received  # masked before anything left the machine
    assert all(h.get("authorization") == f"Bearer {SECRET}" for h in judge.headers)  # the key goes only there

    m = manifest(tmp_path, "fb")
    assert m["metrics"]["judge"]["requests_sent"] == 8 and m["metrics"]["scored"] == 8
    assert SECRET not in caplog.text
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file() and path.suffix not in (".safetensors", ".bin"):
            assert SECRET.encode() not in path.read_bytes(), path

    # Forced re-run of the stage (config unchanged): every verdict comes from the cache, nothing is sent.
    assert run_recipe(tmp_path, [stage(tmp_path, tiny_model, judge)], "--only", "fb") == 0
    assert judge.count == sent
    assert manifest(tmp_path, "fb")["metrics"]["judge"]["cache_hits"] == 8


def test_scoring_killed_midway_resumes_without_repeating_a_cached_request(tmp_path, tiny_model, judge):
    judge.script(then=pointwise_reply, latency=0.15)
    recipe = {"name": "kill", "run_dir": str(tmp_path / "run"),
              "stages": [stage(tmp_path, tiny_model, judge, max_concurrency=2)]}
    recipe["stages"][0]["args"]["samples_per_prompt"] = 4  # 16 requests at 2 in flight: ~1.2 s of scoring
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    command = [sys.executable, str(ROOT / "rlmed" / "run.py"), str(path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while judge.count < 6 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    time.sleep(0.3)
    sent_before = judge.count
    cached = len(ChatCache(tmp_path / "run" / "judge_cache"))
    assert 0 < cached < 16 and not (tmp_path / "run" / "fb" / "manifest.json").exists()

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert judge.count - sent_before == 16 - cached  # only what was not cached was asked again
    scored = [json.loads(line) for line in (tmp_path / "run" / "fb" / "scored.jsonl").read_text().splitlines()]
    assert sorted((r["prompt_id"], r["sample"]) for r in scored) == [(f"p{p}", s) for p in range(4) for s in range(4)]
    assert all(r["score"] is not None for r in scored)


def listwise_reply(body: dict) -> str:
    """Two candidates per request (samples_per_prompt=2): the one shown first gets 9, the other 2."""
    criteria = ("informativeness", "coherence", "human_preference", "factual_accuracy")
    return json.dumps({"candidates": [{"id": str(i + 1), "scores": {c: s for c in criteria}, "overall": s,
                                       "rationale": "对照参考答案"} for i, s in enumerate((9, 2))]})


def test_listwise_judge_scores_all_candidates_of_a_prompt_in_one_request(tmp_path, tiny_model, judge, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    judge.script(then=listwise_reply)
    assert run_recipe(tmp_path, [stage(tmp_path, tiny_model, judge, mode="listwise")]) == 0
    assert judge.count == 4  # 4 prompts, not 8 candidates
    scored = [json.loads(line) for line in (tmp_path / "run" / "fb" / "scored.jsonl").read_text().splitlines()]
    by_prompt: dict[str, list[float]] = {}
    for row in scored:
        by_prompt.setdefault(row["prompt_id"], []).append(row["score"])
    for values in by_prompt.values():  # each verdict mapped back to one candidate: one 9/10-ish, one 2/10-ish
        assert sorted(round(v, 4) for v in values) == [round(1 / 9, 4), round(8 / 9, 4)]
    assert manifest(tmp_path, "fb")["metrics"]["pairs"] == 4
