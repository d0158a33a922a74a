"""Against `transformers serve` on the tiny model (a real OpenAI-compatible server): as the judge, whose random
replies are unparseable and must be retried, counted and reported; and as the generation endpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest

from tests.distributed.conftest import free_port
from tests.reward.server import Fault, JudgeServer, Reply
from tests.stages.conftest import manifest, run_recipe, sample


# What the served model takes, prompt and answer, in tokens. The tiny model's 2048 is too few for a judge request
# (the rubric alone, in a 2048-token vocabulary, is about 2,000): transformers serve answers a longer prompt with
# HTTP 400 since 5.25 (older releases generated past the context). Its RoPE positions have no learned limit.
CONTEXT = 8192


@pytest.fixture(scope="module")
def talking_model(tmp_path_factory, tiny_model):
    """The tiny model after 30 SFT steps (a random one's greedy tokens are special tokens, which decode to ""),
    with a context of CONTEXT tokens."""
    root = tmp_path_factory.mktemp("talking")
    stage = {"id": "sft", "kind": "sft", "inputs": {"model": str(tiny_model), "data": sample("dialogues.jsonl")},
             "args": {"validation_fraction": 0},
             "trainer": {"max_steps": 30, "learning_rate": 5e-3, "per_device_train_batch_size": 16, "max_length": 256}}
    assert run_recipe(root, [stage]) == 0
    model = root / "run" / "sft" / "model"
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": CONTEXT}, indent=2))
    return model


def transformers_command(*args: str) -> list[str]:
    """`transformers <args>` run by this interpreter, through the console-script entry point its installed
    transformers declares: PATH may hold another environment's `transformers`, or none."""
    from importlib.metadata import entry_points

    found = [e for e in entry_points(group="console_scripts") if e.name == "transformers"]
    assert found, "the installed transformers declares no `transformers` command (pip install 'transformers[serving]')"
    module, function = found[0].value.split(":")
    code = f"import sys; from {module} import {function} as main; sys.argv[0] = 'transformers'; sys.exit(main())"
    return [sys.executable, "-c", code, *args]


@pytest.fixture(scope="module")
def served(talking_model):
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = transformers_command("serve", str(talking_model), "--device", "cpu", "--port", str(port))
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    try:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"transformers serve did not start: {process.stderr.read()[-2000:]}")
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1", str(talking_model)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:  # still busy generating: it must not outlive the tests
            process.kill()
            process.wait(timeout=30)


@pytest.fixture
def relay(served):
    """A recording relay in front of the server (the test judge server, answering by forwarding): what the stage
    sent and what it got back, seen from outside the stage, whose audit log is only its own account.
    The served model answers every prompt alike (measured: "，，，，..." to each), so the relay ends each reply
    with its request's number: a reply filed under another prompt then shows.
    Yields (server, replies): server.received holds the request bodies, replies (messages, text as relayed)."""
    base_url, _ = served
    replies: list[tuple[list[dict], str]] = []
    lock = threading.Lock()  # the relay answers requests concurrently

    def forward(body: dict) -> Reply | Fault:
        request = urllib.request.Request(f"{base_url}/chat/completions", data=json.dumps(body).encode("utf-8"),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                choice = json.load(response)["choices"][0]
        except urllib.error.HTTPError as exc:  # passed on as it came, so the stage sees the server's error
            return Fault("status", exc.code)
        with lock:
            text = f"{choice['message']['content']} #{len(replies)}"
            replies.append((body["messages"], text))
        return Reply(text, choice.get("finish_reason"))

    with JudgeServer() as server:
        server.script(then=forward, copy_tag=False)
        yield server, replies


def test_judge_replies_from_a_random_model_are_retried_counted_and_reported(tmp_path, tiny_model, served):
    base_url, model = served
    stage = {"id": "fb", "kind": "ai_feedback",
             "inputs": {"model": str(tiny_model), "prompts": sample("doctor_dialogues.jsonl")},
             "args": {"samples_per_prompt": 2, "max_prompts": 2, "max_new_tokens": 12, "max_failed_fraction": 1.0},
             "reward": {"_component_": "reward.judge.LLMJudge", "model": model, "base_url": base_url,
                        "api_key_env": None, "parse_retries": 1, "max_tokens": 24, "max_concurrency": 2,
                        "timeout_s": 60.0}}
    assert run_recipe(tmp_path, [stage]) == 0
    metrics = manifest(tmp_path, "fb")["metrics"]
    assert metrics["candidates"] == 4 and metrics["failed_scores"] == 4 and metrics["pairs"] == 0
    assert metrics["judge"]["parse_failures"] == 4 * 2  # each asked once more, then given up: never a fake score
    assert metrics["judge"]["requests_sent"] == 8 and metrics["judge"]["completion_tokens"] > 0
    assert 0 < metrics["judge"]["prompt_tokens"] / 8 < CONTEXT - 24  # the requests (alike in length) fit
    scored = [json.loads(line) for line in (tmp_path / "run" / "fb" / "scored.jsonl").read_text().splitlines()]
    assert all(r["score"] is None and "did not parse after 2 asks" in r["error"] for r in scored), scored[0]["error"]


def test_generation_through_the_server_writes_candidates_like_local_generation(tmp_path, served, relay):
    _, model = served
    server, replies = relay
    base_url = server.base_url
    reward = {"_component_": "tests.helpers.rewards.CharOverlap"}
    args = {"samples_per_prompt": 2, "max_prompts": 3, "max_new_tokens": 12}
    local = {"id": "fb", "kind": "ai_feedback", "inputs": {"model": model,
                                                           "prompts": sample("doctor_dialogues.jsonl")},
             "args": args, "reward": reward}
    remote = {**local, "args": {**args, "endpoint": {"base_url": base_url, "model": model}}}
    (tmp_path / "local").mkdir()
    (tmp_path / "remote").mkdir()
    assert run_recipe(tmp_path / "local", [local]) == 0
    assert run_recipe(tmp_path / "remote", [remote]) == 0

    def candidates(root):
        return [json.loads(line) for line in (root / "run" / "fb" / "candidates.jsonl").read_text().splitlines()]

    a, b = candidates(tmp_path / "local"), candidates(tmp_path / "remote")
    assert len(a) == len(b) == 6
    assert [(r["prompt_id"], r["sample"], r["prompt"], r["reference"]) for r in a] == \
        [(r["prompt_id"], r["sample"], r["prompt"], r["reference"]) for r in b]
    assert all(isinstance(r["completion"], str) and r["completion"] for r in a + b)
    # The server was asked: one request per sample (servers differ on `n`, so it is not relied on), each prompt
    # as written (a local server: nothing masked), with the stage's sampling settings.
    assert len(server.received) == 3 * 2
    assert all(body["model"] == model and body.get("n", 1) == 1 and body["max_tokens"] == 12
               and body["temperature"] == 1.0 for body in server.received)
    asked = Counter(json.dumps(body["messages"], ensure_ascii=False) for body in server.received)
    assert asked == Counter(json.dumps(r["prompt"], ensure_ascii=False) for r in b) and len(asked) == 3
    # ...and its replies are the candidates (per prompt; the requests run concurrently, so in any order).
    assert sorted((json.dumps(r["prompt"], ensure_ascii=False), r["completion"]) for r in b) == \
        sorted((json.dumps(messages, ensure_ascii=False), text.strip()) for messages, text in replies)
    # The manifest says where the prompts went and whether they were masked; the audit log lists each request.
    record = manifest(tmp_path / "remote", "fb")["metrics"]["endpoint"]
    assert record["url"] == base_url.rstrip("/") and record["deidentification"]["enabled"] is False
    audit = (tmp_path / "remote" / "run" / "audit" / "fb.rank0.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["record"] for line in audit) == sorted(str(r["prompt_id"]) for r in b)
