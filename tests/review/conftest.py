"""A run folder as evaluate and ai_feedback leave it (no model needed), and a real review server process."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT

SCRIPT = "<script>window.__pwned = 1</script><b>粗体</b><img src=x onerror=\"window.__pwned = 2\">"
MODELS = ("sft", "ppo")
EVAL_ROWS = 6  # generation rows of the eval set; row 4 has the same answer from both models, row 5 the <script>
FEEDBACK_PROMPTS = 4


def _write(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _manifest(stage_dir: Path, kind: str) -> None:
    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / "manifest.json").write_text(json.dumps({"id": stage_dir.name, "kind": kind}), encoding="utf-8")


def question(i: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": "你是一名儿科医生。"},
            {"role": "user", "content": f"孩子{i % 14 + 1}岁，发烧{i % 3 + 1}天了，怎么办？"}]


def careful(i: int) -> str:
    return f"{i % 14 + 1}岁孩子发烧{i % 3 + 1}天：多喝水，体温超过38.5度可用对乙酰氨基酚；精神差、抽搐或呼吸急促请立即就医。"


def curt(i: int) -> str:
    return ["多喝热水。", "没事，不用管。", "用酒精擦身退烧。", "不清楚。"][i % 4] + f"（{i}）"


def make_run(run_dir: Path, eval_rows: int = EVAL_ROWS) -> Path:
    """Completed evaluate (sft vs ppo, with rewards) and ai_feedback stages, plus things review must ignore:
    choice rows, a rank shard, and an evaluate folder without a manifest (crashed)."""
    evaluate = run_dir / "eval"
    _manifest(evaluate, "evaluate")
    (evaluate / "results.json").write_text(json.dumps({"baseline": "sft", "models": {m: {} for m in MODELS}}))
    for model in MODELS:
        rows = []
        for i in range(eval_rows):
            answer = careful(i) if model == "ppo" else curt(i)
            if i == 4:
                answer = "两个模型一样的回答。"
            if i == 5 and model == "ppo":
                answer = SCRIPT
            rows.append({"set": "dialogues", "index": i, "kind": "generation", "prompt": question(i),
                         "answer": answer, "reference": f"医生回复{i}：观察精神状态。",
                         "reward": 0.9 if model == "ppo" else 0.1})
        rows.append({"set": "mcq", "index": 0, "kind": "choice", "prompt": question(0), "answer": "A",
                     "reference": None, "options": ["a", "b"], "answer_key": "A"})
        _write(evaluate / "generations" / f"{model}.jsonl", rows)
        _write(evaluate / "generations" / f"{model}.rank1.jsonl", rows[:1])
    crashed = run_dir / "eval_crashed" / "generations"
    _write(crashed / "sft.jsonl", [])
    feedback = run_dir / "feedback"
    _manifest(feedback, "ai_feedback")
    candidates, scored, pairs = [], [], []
    for p in range(FEEDBACK_PROMPTS):
        texts = [careful(p + 10), curt(p + 10), curt(p + 10)]
        for j, text in enumerate(texts):
            row = {"prompt_id": f"p{p}", "sample": j, "prompt": question(p + 10), "reference": f"参考{p}",
                   "completion": text}
            candidates.append(row)
            scored.append({**row, "score": [0.8, 0.2, 0.3][j]})
        pairs.append({"messages": question(p + 10), "chosen": texts[0], "rejected": texts[1], "prompt_id": f"p{p}"})
    _write(feedback / "candidates.jsonl", candidates)
    _write(feedback / "scored.jsonl", scored)
    _write(feedback / "pairs.jsonl", pairs)
    return run_dir


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return make_run(tmp_path / "run")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ReviewServer:
    """`rlmed review RUN_DIR` in its own process, as a user starts it; kill() is SIGKILL, no clean shutdown."""

    def __init__(self, run_dir: Path, *args: str, port: int | None = None):
        self.run_dir, self.args = run_dir, list(args)
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.tokens: dict[str, str] = {}
        self.output: list[str] = []

    def start(self, *extra: str, timeout: float = 30.0) -> "ReviewServer":
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "rlmed.cli", "review", str(self.run_dir), "--port", str(self.port),
                   *self.args, *extra]
        self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"rlmed review exited ({self.proc.wait()}):\n" + "".join(self.output))
            self.output.append(line)
            found = re.match(r"\s+(\S+): http://\S+\?token=(\S+)$", line)
            if found:
                self.tokens[found.group(1)] = found.group(2)
            if line.startswith("serving on"):
                break
        while time.monotonic() < deadline:  # uvicorn binds after the line is printed
            try:
                httpx.get(self.base + "/", timeout=1.0)
                return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise AssertionError("the review server did not answer:\n" + "".join(self.output))

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def client(self, annotator: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[annotator]}"} if annotator else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=10.0)


@pytest.fixture
def review_server(run_dir):
    servers: list[ReviewServer] = []

    def start(*args: str) -> ReviewServer:
        server = ReviewServer(run_dir, *args).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.kill()
