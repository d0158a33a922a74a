"""The audit log: one line per request that left the machine, with nothing of its text, appended only."""

from __future__ import annotations

import asyncio
import os
import stat

import pytest

from reward.audit import AuditLog, request_sha256
from reward.cache import ChatCache
from reward.client import ChatClient, ChatRequest, JudgeError
from tests.reward.server import Fault

KEY = "sk-audit-test-7Hq2Lm9Xw4Rt8Yp1Zs6Vb3Nc"
PROMPTS = ["患儿男，3岁，发热两天，体温39.2℃", "电话13812345678的家长问：咳嗽能吃头孢吗？", "第三个问题"]


def requests() -> list[ChatRequest]:
    return [ChatRequest([{"role": "user", "content": p}], record_id=f"p{i}", masked={"mobile": i % 2})
            for i, p in enumerate(PROMPTS)]


def test_one_line_per_request_sent_with_no_text_and_hashes_that_match_the_bodies(judge_server, tmp_path,
                                                                              monkeypatch):
    monkeypatch.setenv("RLMED_AUDIT_KEY", KEY)
    path = tmp_path / "feedback" / "audit.jsonl"
    judge_server.script(fail=[Fault("status", 429, retry_after=0.01), 400])  # a retried attempt, a refused one
    client = ChatClient(judge_server.base_url, "judge-test", api_key_env="RLMED_AUDIT_KEY", progress=False,
                        audit=AuditLog(path, stage="feedback"), cache=ChatCache(tmp_path / "cache"),
                        backoff_base_s=0.01, max_concurrency=1)
    results = asyncio.run(client.chat_many(requests()))
    assert sum(isinstance(r, JudgeError) for r in results) == 1
    asyncio.run(client.chat_many(requests()))  # the two that succeeded are cache hits now: nothing sent for them
    lines = AuditLog.read(path)
    # Sent: 429 then ok (one record, two attempts), 400, ok; then the refused one again, which is no cache hit.
    assert len(lines) == judge_server.count == client.stats.requests_sent == 5
    assert sorted(line["attempt"] for line in lines if line["record"] == "p0")[-1] == 2
    assert sorted(line["outcome"] for line in lines) == ["HTTP 400", "HTTP 429", "ok", "ok", "ok"]
    assert all(line["stage"] == "feedback" and line["host"] == "127.0.0.1" and line["url"] == judge_server.base_url
               and line["model"] == "judge-test" and line["time"].endswith("+00:00") for line in lines)
    by_record = {line["record"]: line for line in lines}
    assert set(by_record) == {"p0", "p1", "p2"} and by_record["p1"]["masked"] == {"mobile": 1}
    # Each line names its request by the hash of the body the server received, and carries none of its text.
    assert sorted(line["request_sha256"] for line in lines) == sorted(map(request_sha256, judge_server.received))
    raw = path.read_text(encoding="utf-8")
    for text in PROMPTS + [KEY, "患儿", "13812345678"]:
        assert text not in raw
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_append_only_across_clients_and_an_existing_file_is_kept_and_tightened(judge_server, tmp_path):
    path = tmp_path / "audit.jsonl"
    path.write_text('{"earlier": "line"}\n')
    os.chmod(path, 0o644)
    first = ChatClient(judge_server.base_url, "judge-test", api_key_env=None, progress=False, audit=path)
    asyncio.run(first.chat_many(requests()[:2]))
    before = path.read_bytes()
    second = ChatClient(judge_server.base_url, "judge-test", api_key_env=None, progress=False,
                        audit=AuditLog(path, stage="eval"))
    asyncio.run(second.chat_many(requests()))
    after = path.read_bytes()
    assert after.startswith(before) and before.startswith(b'{"earlier": "line"}\n')
    lines = AuditLog.read(path)[1:]
    assert [line["stage"] for line in lines] == [None, None, "eval", "eval", "eval"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_text_cannot_reach_the_log_through_ids_or_counts(judge_server, tmp_path):
    path = tmp_path / "audit.jsonl"
    client = ChatClient(judge_server.base_url, "judge-test", api_key_env=None, progress=False, audit=path)
    asyncio.run(client.chat([{"role": "user", "content": "hi"}], record_id="患儿 张三 13812345678"))
    [line] = AuditLog.read(path)
    assert line["record"].startswith("sha256:") and "张三" not in path.read_text(encoding="utf-8")
    for masked in ({"mobile": "13812345678"}, {"患儿张三": 1}, {"mobile": -1}):
        with pytest.raises(ValueError, match="masked counts"):
            asyncio.run(client.chat([{"role": "user", "content": "hi"}], masked=masked))
    assert judge_server.count == 1  # refused before anything was sent


def test_a_link_at_the_log_path_is_not_followed(tmp_path):
    target = tmp_path / "elsewhere.txt"
    target.write_text("")
    (tmp_path / "audit.jsonl").symlink_to(target)
    with pytest.raises(OSError):
        AuditLog(tmp_path / "audit.jsonl").record(request_sha256="0" * 64, url="http://127.0.0.1/v1",
                                                  host="127.0.0.1", model="m", attempt=1, outcome="ok")
    assert target.read_text() == ""
