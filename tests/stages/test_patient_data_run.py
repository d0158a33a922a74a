"""What a hospital's security officer checks on a real run (issue 15): the run folder and its patient-text
files are closed to other users, every request that left the machine is in the stage's audit log without its
text, the manifest says what was masked and where requests went, and nothing goes to a host the recipe did not
name."""

from __future__ import annotations

import json
import os
import stat

import pytest

from reward.hosts import HostNotAllowed
from reward.judge import LLMJudge
from tests.reward.server import JudgeServer
from tests.stages.conftest import manifest, run_recipe
from tests.stages.test_feedback_sources import pointwise_reply
from tests.stages.test_judge_feedback import ID_CARD, PHONE, stage


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def judge():
    with JudgeServer() as server:
        server.script(then=pointwise_reply)
        yield server


def test_a_judged_run_is_private_audited_and_says_what_it_masked(tmp_path, tiny_model, judge, monkeypatch):
    monkeypatch.setenv("RLMED_TEST_JUDGE_KEY", "sk-judge-test-0000")
    # A gateway key in the URL's query and a password in its user-info: neither may reach a file.
    spec = stage(tmp_path, tiny_model, judge)
    spec["reward"]["base_url"] = judge.base_url.replace("http://", "http://alice:pw-71c3@") + "?api-key=gw-5e9a"
    assert run_recipe(tmp_path, [spec]) == 0
    run = tmp_path / "run"
    assert mode(run) == 0o700
    for name in ("candidates.jsonl", "scored.jsonl", "pairs.jsonl"):
        assert mode(run / "fb" / name) == 0o600, name

    assert all(path.endswith("?api-key=gw-5e9a") for path in judge.paths)  # the key still reaches the gateway
    lines = [json.loads(line) for line in (run / "audit" / "fb.rank0.jsonl").read_text().splitlines()]
    assert len(lines) == judge.count == 8
    assert {line["host"] for line in lines} == {"127.0.0.1"} and {line["stage"] for line in lines} == {"fb"}
    assert all(line["masked"].get("mobile", 0) >= 1 and line["masked"].get("id_card", 0) >= 1 for line in lines)
    assert mode(run / "audit" / "fb.rank0.jsonl") == 0o600

    judge_metrics = manifest(tmp_path, "fb")["metrics"]["judge"]
    assert judge_metrics["deidentification"]["enabled"] is True
    assert judge_metrics["endpoint"] == judge.base_url.rstrip("/")
    for path in run.rglob("*"):
        if path.is_file() and path.suffix not in (".safetensors", ".bin"):
            data = path.read_bytes()
            assert b"pw-71c3" not in data and b"gw-5e9a" not in data, path
            if "audit" in path.parts:
                assert PHONE.encode() not in data and "发烧".encode() not in data, path


def test_a_judge_whose_host_the_recipe_does_not_name_is_refused_before_anything_is_sent():
    unnamed = LLMJudge(model="gpt-4o", api_key_env=None)  # no base_url: OpenAI's API, which the recipe never named
    with pytest.raises(HostNotAllowed) as info:
        unnamed.client
    assert "judge.allowed_hosts" in str(info.value) and "api.openai.com" in str(info.value)
    assert LLMJudge(model="gpt-4o", api_key_env=None, allowed_hosts=["api.openai.com"]).client.host == \
        "api.openai.com"
    with pytest.raises(HostNotAllowed, match="https"):
        LLMJudge(model="m", base_url="http://judge.example.org/v1", api_key_env=None).client
