"""ChatCache on its own (shards, torn lines, kill -9) and inside ChatClient (hits, misses, no garbage cached)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from reward.cache import ChatCache
from reward.client import ChatClient, ChatRequest
from tests.reward.test_client import MSG, make_client, parse_score

ROOT = Path(__file__).resolve().parents[2]


def requests(n: int) -> list[ChatRequest]:
    return [ChatRequest([{"role": "user", "content": f"问题{i}"}], sampling={"temperature": 0}) for i in range(n)]


def test_put_get_and_reopen(tmp_path):
    with ChatCache(tmp_path) as cache:
        cache.put("k1", "回答一", {"prompt_tokens": 3, "completion_tokens": 3})
        assert cache.get("k1") == {"text": "回答一", "usage": {"prompt_tokens": 3, "completion_tokens": 3}}
        assert cache.get("missing") is None and len(cache) == 1
    reopened = ChatCache(tmp_path)
    assert reopened.get("k1")["text"] == "回答一" and "k1" in reopened
    with pytest.raises(ValueError):
        ChatCache(tmp_path, shard="../evil")


def test_second_identical_run_sends_zero_requests(judge_server, tmp_path):
    client = make_client(judge_server.base_url, cache=ChatCache(tmp_path, shard="0"))
    first = asyncio.run(client.chat_many(requests(10)))
    sent = judge_server.count
    assert sent == 10
    client.cache.close()
    again = make_client(judge_server.base_url, cache=ChatCache(tmp_path, shard="1"))  # a restarted job
    second = asyncio.run(again.chat_many(requests(10)))
    assert judge_server.count == sent and again.stats.requests_sent == 0 and again.stats.cache_hits == 10
    assert [r.text for r in second] == [r.text for r in first]
    assert all(r.cached and r.attempts == 0 for r in second)
    assert second[0].usage == first[0].usage


def test_different_sampling_params_or_namespace_miss(judge_server, tmp_path):
    client = make_client(judge_server.base_url, cache=ChatCache(tmp_path))

    async def go() -> list[bool]:
        calls = [dict(temperature=0), dict(temperature=0.7), dict(temperature=0, cache_namespace="rubric-b"),
                 dict(temperature=0, max_tokens=64), dict(temperature=0), dict(cache_namespace="rubric-b",
                                                                                temperature=0)]
        return [(await client.chat(MSG, **kw)).cached for kw in calls]

    assert asyncio.run(go()) == [False, False, False, False, True, True]
    assert judge_server.count == 4
    other_model = ChatClient(judge_server.base_url, "another-judge", api_key_env=None, progress=False)
    assert other_model.cache_key(MSG, temperature=0) != client.cache_key(MSG, temperature=0)
    # the key does not depend on the order the caller wrote the params in
    assert client.cache_key(MSG, temperature=0, top_p=1) == client.cache_key(MSG, top_p=1, temperature=0)


def test_unparseable_reply_is_not_cached(judge_server, tmp_path):
    judge_server.script(fail=["garbage"], then=lambda body: '{"score": 5}')
    client = make_client(judge_server.base_url, cache=ChatCache(tmp_path))
    assert asyncio.run(client.chat(MSG, parse=parse_score)).parsed == 5
    assert len(client.cache) == 1 and client.cache.get(client.cache_key(MSG))["text"] == '{"score": 5}'
    again = asyncio.run(client.chat(MSG, parse=parse_score))
    assert again.cached and again.parsed == 5 and judge_server.count == 2


def test_torn_last_line_is_ignored_and_not_glued_to_the_next(tmp_path, caplog):
    shard = tmp_path / "shard-0.jsonl"
    good = [json.dumps({"key": f"k{i}", "text": f"t{i}", "usage": {}}) + "\n" for i in range(3)]
    shard.write_text("".join(good) + '{"key": "k3", "text": "被截', encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="reward.cache"):
        cache = ChatCache(tmp_path)
    assert len(cache) == 3 and cache.get("k3") is None
    assert any("torn" in r.getMessage() for r in caplog.records)
    cache.put("k4", "t4")
    cache.close()
    assert ChatCache(tmp_path).get("k4") == {"text": "t4", "usage": {}}


def test_two_shards_are_both_read(tmp_path):
    with ChatCache(tmp_path, shard="0") as a, ChatCache(tmp_path, shard="1") as b:
        a.put("from-rank-0", "甲")
        b.put("from-rank-1", "乙")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-0.jsonl", "shard-1.jsonl"]
    merged = ChatCache(tmp_path, shard="2")
    assert merged.get("from-rank-0")["text"] == "甲" and merged.get("from-rank-1")["text"] == "乙"


WRITER = textwrap.dedent("""
    import sys
    from reward.cache import ChatCache
    cache = ChatCache(sys.argv[1], shard="w", fsync_every=1000)
    i = 0
    while True:
        cache.put(f"k{i}", "回答" * (50 + i % 200) + str(i), {"prompt_tokens": i, "completion_tokens": 1})
        i += 1
""")


def test_kill_9_mid_write_leaves_a_clean_prefix(tmp_path):
    shard = tmp_path / "shard-w.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while (not shard.exists() or shard.stat().st_size < 2_000_000) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    cache = ChatCache(tmp_path, shard="reader")
    n = len(cache)
    assert n > 500
    for i in range(n):  # exactly k0 .. k(n-1), each intact
        entry = cache.get(f"k{i}")
        assert entry == {"text": "回答" * (50 + i % 200) + str(i), "usage": {"prompt_tokens": i, "completion_tokens": 1}}
    # the writer can resume its own shard after the kill without fusing its next line to a torn one
    writer = ChatCache(tmp_path, shard="w")
    writer.put("after-kill", "ok")
    writer.close()
    assert ChatCache(tmp_path, shard="reader").get("after-kill") == {"text": "ok", "usage": {}}
