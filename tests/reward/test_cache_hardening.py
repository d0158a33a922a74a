"""The judge cache under hostile or damaged shards (issue 15 items 6, 7 and the HMAC of item 8).

A row that cannot be served (text not a string, usage not a dict of counts) used to raise inside scoring and
abort the run; now it is skipped on load, counted, and its request asked again. Two endpoints with the same model
name used to share verdicts; now the endpoint is part of the key. With $RLMED_CACHE_KEY set, a planted line
without the right HMAC is never served.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from reward.base import Sample
from reward.cache import KEY_ENV, ChatCache
from tests.reward.server import JudgeServer
from tests.reward.test_client import MSG, make_client, parse_score

CRITERIA = ("informativeness", "coherence", "human_preference", "factual_accuracy")
PROMPT = [{"role": "user", "content": "宝宝一岁，拉肚子一天，怎么办？"}]


@pytest.fixture(autouse=True)
def no_cache_key(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)


def write_shard(folder: Path, rows: list[Any], name: str = "shard-planted.jsonl") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


BAD_ROWS = [
    {"key": "text-null", "text": None, "usage": {}},
    {"key": "text-number", "text": 5, "usage": {}},
    {"key": "usage-list", "text": '{"score": 2}', "usage": [1, 2]},
    {"key": "usage-string", "text": '{"score": 2}', "usage": "many"},
    {"key": "usage-null", "text": '{"score": 2}', "usage": None},
    {"key": "usage-text-count", "text": '{"score": 2}', "usage": {"prompt_tokens": "7"}},
    {"key": "usage-bool", "text": '{"score": 2}', "usage": {"prompt_tokens": True}},
    {"key": "usage-negative", "text": '{"score": 2}', "usage": {"prompt_tokens": -1}},
    {"key": 17, "text": '{"score": 2}', "usage": {}},
    {"text": '{"score": 2}', "usage": {}},
    ["key", "text"],
    "3",
]


def test_unusable_rows_are_skipped_counted_and_miss(tmp_path):
    good = {"key": "good", "text": '{"score": 4}', "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
    write_shard(tmp_path, [good, *BAD_ROWS, '{"key": "torn", "te'])
    cache = ChatCache(tmp_path)
    assert cache.get("good") == {"text": '{"score": 4}', "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
    for row in BAD_ROWS:
        if isinstance(row, dict) and isinstance(row.get("key"), str):
            assert cache.get(row["key"]) is None, row
    assert cache.stats.as_dict() == {"loaded": 1, "unreadable": 1, "invalid": len(BAD_ROWS), "tampered": 0}


@pytest.mark.parametrize("row", [{"text": None}, {"text": 5}, {"text": '{"score": 4}', "usage": [1, 2]},
                                 {"text": '{"score": 4}', "usage": "many"}])
def test_a_bad_cached_row_is_asked_again_not_raised_mid_run(judge_server, tmp_path, row):
    judge_server.script(then=lambda body: '{"score": 3}')
    key = make_client(judge_server.base_url).cache_key(MSG)
    write_shard(tmp_path, [{"key": key, "usage": {}, **row}])
    client = make_client(judge_server.base_url, cache=ChatCache(tmp_path))
    result = asyncio.run(client.chat(MSG, parse=parse_score))
    assert result.parsed == 3 and not result.cached and judge_server.count == 1
    assert client.cache.stats.invalid == 1


def test_the_judge_reports_skipped_cache_rows_in_its_stats(tmp_path):
    from reward.judge import LLMJudge

    write_shard(tmp_path / "cache", [{"key": "k", "text": None}, '{"key": "torn"'])
    judge = LLMJudge(model="judge-test", base_url="http://127.0.0.1:9/v1", api_key_env=None,
                     cache_dir=str(tmp_path / "cache"))
    stats = judge.stats.as_dict()
    assert stats["cache_invalid"] == 1 and stats["cache_unreadable"] == 1 and stats["cache_tampered"] == 0
    assert judge.stats.cache_hits == 0  # the client's own counters still read through


# --------------------------------------------------------------------------------------------- the key (item 7)


def verdict_of(value: int) -> Any:
    return lambda body: json.dumps({"scores": {c: value for c in CRITERIA}, "overall": value})


def judge_score(base_url: str, cache_dir: Path) -> tuple[float | None, Any]:
    from reward.judge import LLMJudge

    judge = LLMJudge(model="judge-test", base_url=base_url, api_key_env=None, cache_dir=str(cache_dir),
                     max_retries=0, timeout_s=5.0)
    judge.client.progress = False

    async def go() -> Any:
        try:
            return await judge.score([Sample(PROMPT, "多补液，观察尿量，精神差或便血请就医。", None)])
        finally:
            await judge.aclose()

    (score,) = asyncio.run(go())
    return score.value, judge.stats


def test_two_endpoints_with_the_same_model_name_never_share_verdicts(tmp_path):
    with JudgeServer() as first, JudgeServer() as second:
        first.script(then=verdict_of(10))
        second.script(then=verdict_of(1))
        value, _ = judge_score(first.base_url, tmp_path)
        assert value == pytest.approx(1.0) and first.count == 1
        value, stats = judge_score(second.base_url, tmp_path)  # same model name, same cache folder
        assert value == pytest.approx(0.0) and second.count == 1 and stats.cache_hits == 0
        # The same endpoint still hits, also when written with a trailing slash.
        value, stats = judge_score(first.base_url + "/", tmp_path)
        assert value == pytest.approx(1.0) and first.count == 1 and stats.cache_hits == 1


def test_credentials_in_the_url_stay_out_of_the_key_and_the_cache(tmp_path):
    from reward.judge import LLMJudge

    plain = LLMJudge(model="m", base_url="https://judge.example/v1", api_key_env=None)
    keyed = LLMJudge(model="m", base_url="https://user:s3cret-pass@judge.example/v1/?api-key=s3cret-key",
                     api_key_env=None)
    assert plain.cache_namespace == keyed.cache_namespace
    assert "s3cret" not in keyed.cache_namespace


# --------------------------------------------------------------------------------------------- HMAC (item 8)


def test_with_a_cache_key_lines_carry_an_hmac_and_planted_lines_are_rejected(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "cache-secret-for-tests")
    with ChatCache(tmp_path, shard="0") as cache:
        cache.put("mine", '{"score": 2}', {"prompt_tokens": 5})
    line = json.loads((tmp_path / "shard-0.jsonl").read_text(encoding="utf-8"))
    assert isinstance(line["mac"], str) and len(line["mac"]) == 64
    forged = {**line, "text": '{"score": 5}'}  # a planted verdict reusing a real line's MAC
    write_shard(tmp_path, [{"key": "planted", "text": '{"score": 5}', "usage": {}}, forged,
                           {"key": "bad-mac", "text": "x", "usage": {}, "mac": "0" * 64}])
    reopened = ChatCache(tmp_path, shard="1")
    assert reopened.get("mine") == {"text": '{"score": 2}', "usage": {"prompt_tokens": 5}}  # the real line
    assert reopened.get("planted") is None and reopened.get("bad-mac") is None
    assert reopened.stats.tampered == 3 and reopened.stats.loaded == 1

    monkeypatch.setenv(KEY_ENV, "another-secret")  # lines written under another key are not trusted either
    assert ChatCache(tmp_path, shard="1").get("mine") is None


def test_without_a_cache_key_lines_with_an_hmac_still_load(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "cache-secret-for-tests")
    with ChatCache(tmp_path) as cache:
        cache.put("k", "v")
    monkeypatch.delenv(KEY_ENV)
    assert ChatCache(tmp_path).get("k") == {"text": "v", "usage": {}}


def test_put_refuses_a_row_it_could_not_read_back(tmp_path):
    with ChatCache(tmp_path) as cache:
        with pytest.raises(TypeError):
            cache.put("k", None)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            cache.put("k", "v", {"prompt_tokens": "3"})
        assert len(cache) == 0
