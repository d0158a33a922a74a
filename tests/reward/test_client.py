"""ChatClient against a real local HTTP server: retries, parse re-asks, limits, key hygiene, accounting."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
import traceback

import pytest

from reward.client import ChatClient, ChatRequest, ChatResult, JudgeError
from reward.ratelimit import TokenBucket, retry_after_s
from tests.reward.server import Fault, free_port

MSG = [{"role": "user", "content": "孩子发烧38.5度怎么办？"}]


def make_client(base_url: str, **kw) -> ChatClient:
    """Fast settings: tiny backoffs and timeouts, no progress bar."""
    opts = dict(api_key_env=None, backoff_base_s=0.01, backoff_max_s=0.05, timeout_s=2.0, progress=False)
    opts.update(kw)
    return ChatClient(base_url, "judge-test", **opts)


def parse_score(text: str) -> int:
    """A strict judge parser: {"score": 1..5} or ValueError."""
    value = json.loads(text)["score"] if text.startswith("{") else None
    if not isinstance(value, int) or not 1 <= value <= 5:
        raise ValueError(f"no score in reply {text[:40]!r}")
    return value


def run(coro):
    return asyncio.run(coro)


def test_429_is_retried_after_waiting_retry_after(judge_server):
    judge_server.script(fail=[Fault("status", 429, retry_after=0.2)])
    client = make_client(judge_server.base_url)
    result = run(client.chat(MSG))
    assert result.text.startswith("reply to:") and result.attempts == 2
    assert judge_server.count == 2
    assert judge_server.times[1] - judge_server.times[0] >= 0.2
    assert client.stats.rate_limited == 1 and client.stats.retries == 1 and client.stats.failures == 0


def test_retry_after_as_http_date_and_ms():
    soon = email.utils.formatdate(time.time() + 3, usegmt=True)
    assert 1.5 <= retry_after_s({"retry-after": soon}) <= 3.5
    assert retry_after_s({"retry-after-ms": "250"}) == 0.25
    assert retry_after_s({}) is None and retry_after_s({"retry-after": "soon-ish"}) is None


def test_500s_are_retried_and_counted(judge_server):
    judge_server.script(fail=[500, 503])
    client = make_client(judge_server.base_url)
    result = run(client.chat(MSG))
    assert result.attempts == 3 and judge_server.count == 3
    assert client.stats.server_errors == 2 and client.stats.retries == 2


def test_timeout_is_retried_and_counted(judge_server):
    judge_server.script(fail=["timeout"])
    client = make_client(judge_server.base_url, timeout_s=0.3)
    start = time.monotonic()
    result = run(client.chat(MSG))
    assert result.text.startswith("reply to:") and time.monotonic() - start >= 0.3
    assert client.stats.timeouts == 1 and client.stats.retries == 1


def test_dropped_connection_is_retried(judge_server):
    judge_server.script(fail=["drop"])
    client = make_client(judge_server.base_url)
    assert run(client.chat(MSG)).attempts == 2
    assert client.stats.connection_errors == 1


def test_connection_refused_retried_up_to_max_retries_then_judge_error():
    client = make_client(f"http://127.0.0.1:{free_port()}/v1", max_retries=2)
    with pytest.raises(JudgeError) as info:
        run(client.chat(MSG))
    assert info.value.kind == "transport" and info.value.attempts == 3
    assert client.stats.connection_errors == 3 and client.stats.retries == 2 and client.stats.failures == 1


def test_retries_stop_at_max_retries(judge_server):
    judge_server.script(fail=[500] * 10)
    client = make_client(judge_server.base_url, max_retries=3)
    with pytest.raises(JudgeError, match="HTTP 500") as info:
        run(client.chat(MSG))
    assert judge_server.count == 4 and info.value.status == 500


def test_400_is_not_retried(judge_server):
    judge_server.script(fail=[400])
    client = make_client(judge_server.base_url)
    with pytest.raises(JudgeError, match="HTTP 400") as info:
        run(client.chat(MSG))
    assert info.value.kind == "http" and judge_server.count == 1
    assert client.stats.retries == 0 and client.stats.failures == 1


def test_garbage_reply_is_reasked_then_parsed(judge_server):
    judge_server.script(fail=["garbage"], then=lambda body: '{"score": 4}')
    client = make_client(judge_server.base_url)
    result = run(client.chat(MSG, parse=parse_score))
    assert result.parsed == 4 and result.attempts == 2
    assert client.stats.parse_failures == 1 and client.stats.retries == 0


def test_garbage_beyond_parse_retries_raises_and_never_invents_a_value(judge_server):
    judge_server.script(then=lambda body: "我觉得还行")
    client = make_client(judge_server.base_url, parse_retries=2)
    with pytest.raises(JudgeError, match="did not parse") as info:
        run(client.chat(MSG, parse=parse_score))
    assert info.value.kind == "parse" and judge_server.count == 3
    assert client.stats.parse_failures == 3 and client.stats.failures == 1


def test_concurrency_bound_respected(judge_server):
    judge_server.script(latency=0.05)
    client = make_client(judge_server.base_url, max_concurrency=4)
    reqs = [ChatRequest([{"role": "user", "content": f"q{i}"}]) for i in range(24)]
    results = run(client.chat_many(reqs))
    assert all(isinstance(r, ChatResult) for r in results)
    assert judge_server.max_in_flight == 4


def test_requests_per_minute_respected_over_a_short_window(judge_server):
    client = make_client(judge_server.base_url, requests_per_minute=600)  # 10/s, burst of 10
    reqs = [ChatRequest([{"role": "user", "content": f"q{i}"}]) for i in range(25)]
    start = time.monotonic()
    run(client.chat_many(reqs))
    assert time.monotonic() - start >= 1.4  # 15 requests beyond the burst at 10/s
    times = judge_server.times
    for t in times:  # any 1 s window: at most burst + rate * 1 s (+1 for clock granularity)
        assert sum(t <= u < t + 1.0 for u in times) <= 21


class FakeTime:
    """A clock that moves only when the bucket sleeps: every wait is exact, and no wall time passes. A bucket that
    never admits a request would sleep forever on it, so more than `limit_s` of fake sleeping is an error."""

    def __init__(self, limit_s: float = 60.0) -> None:
        self.now, self.limit_s = 0.0, limit_s

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if self.now + seconds <= self.now:  # a sleep the clock cannot register: the bucket would spin forever
            raise RuntimeError(f"the bucket slept {seconds!r} s at {self.now!r}: no time passes")
        self.now += seconds
        if self.now > self.limit_s:
            raise RuntimeError(f"the bucket has made a request wait over {self.limit_s} s")


def test_token_bucket_paces_tokens_and_corrects_estimates():
    fake = FakeTime()
    bucket = TokenBucket(1000.0, capacity=100.0, clock=fake.clock, sleep=fake.sleep)

    async def go() -> dict[str, list[float]]:
        waits = {"paced": [await bucket.acquire(50) for _ in range(10)]}
        fake.now += 0.5  # idle for longer than a refill takes: the level stops at the capacity, 100
        waits["full"] = [await bucket.acquire(100)]
        bucket.adjust(60)  # the request cost 60 more than estimated: a debt of 60 tokens
        waits["debt"] = [await bucket.acquire(10)]
        waits["big"] = [await bucket.acquire(250)]  # bigger than the bucket: admitted once full, not refused
        waits["after_big"] = [await bucket.acquire(1)]  # ...and it leaves a debt of 150 behind
        fake.now += 0.03  # 30 tokens back
        waits["partial"] = [await bucket.acquire(50)]  # waits for the 20 missing only
        return waits

    waits = run(go())
    # 100 tokens in the bucket pay for the first two; each further 50 takes 50 / 1000 s to refill.
    assert waits["paced"] == pytest.approx([0.0, 0.0] + [0.05] * 8)
    assert waits["full"] == [0.0]
    assert waits["debt"] == pytest.approx([0.07])  # 60 owed + 10 asked, at 1000/s
    assert waits["big"] == pytest.approx([0.1])  # from empty to full: 100 / 1000 s
    assert waits["after_big"] == pytest.approx([0.151])  # 150 owed + 1 asked
    assert waits["partial"] == pytest.approx([0.02])
    assert fake.now == pytest.approx(0.4 + 0.5 + 0.07 + 0.1 + 0.151 + 0.03 + 0.02)


def test_chat_many_keeps_order_and_returns_failures_as_objects(judge_server):
    judge_server.script(then=lambda b: Fault("status", 400) if b["messages"][-1]["content"] == "bad" else "ok "
                        + b["messages"][-1]["content"])
    client = make_client(judge_server.base_url)
    contents = ["a", "b", "bad", "c", "d"]
    results = run(client.chat_many([ChatRequest([{"role": "user", "content": c}]) for c in contents]))
    assert isinstance(results[2], JudgeError) and results[2].status == 400
    assert [r.text for i, r in enumerate(results) if i != 2] == ["ok a", "ok b", "ok c", "ok d"]


def test_api_key_never_logged_nor_in_errors_and_only_in_authorization(judge_server, monkeypatch, caplog):
    key = "sk-test-Secret-1234567890abcdef"
    monkeypatch.setenv("RLMED_JUDGE_KEY", key)
    caplog.set_level(logging.DEBUG)  # every logger, the openai and HTTP libraries' included
    judge_server.script(fail=[429, 400, "garbage", "garbage", "garbage"], retry_after=0.01)
    client = make_client(judge_server.base_url, api_key_env="RLMED_JUDGE_KEY", parse_retries=2)
    texts = [repr(client), str(client.stats.as_dict())]
    for parse in (None, None, parse_score):  # 429 then 400; a reply; three garbage replies
        try:
            texts.append(run(client.chat(MSG, parse=parse)).text)
        except JudgeError as exc:
            texts += [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    refused = make_client(f"http://127.0.0.1:{free_port()}/v1", api_key_env="RLMED_JUDGE_KEY", max_retries=1)
    with pytest.raises(JudgeError) as info:
        run(refused.chat(MSG))
    texts += [str(info.value), "".join(traceback.format_exception(info.value)), repr(refused)]
    assert len(texts) == 12  # two failures above, three texts each, and the refused one
    assert caplog.records and not any(key in r.getMessage() for r in caplog.records)
    assert not any(key in t for t in texts)
    for body, headers in zip(judge_server.received, judge_server.headers):
        assert key not in json.dumps(body, ensure_ascii=False)
        assert {k: v for k, v in headers.items() if key in v} == {"authorization": f"Bearer {key}"}


def test_non_ascii_key_refused_without_showing_it(monkeypatch):
    monkeypatch.setenv("RLMED_JUDGE_KEY", "sk-秘密")
    with pytest.raises(ValueError) as info:
        make_client("http://127.0.0.1:1/v1", api_key_env="RLMED_JUDGE_KEY")
    assert "秘密" not in str(info.value) and "RLMED_JUDGE_KEY" in str(info.value)


def test_missing_key_env_sends_empty(judge_server, monkeypatch):
    monkeypatch.delenv("RLMED_UNSET_KEY", raising=False)
    run(make_client(judge_server.base_url, api_key_env="RLMED_UNSET_KEY").chat(MSG))
    assert judge_server.headers[0]["authorization"] == "Bearer EMPTY"


def test_usage_and_cost_accounted_from_server_usage(judge_server):
    judge_server.script(fail=["garbage"], then=lambda body: '{"score": 3}')
    client = make_client(judge_server.base_url, price_per_million_input=1.0, price_per_million_output=2.0,
                         tokens_per_minute=6e6)
    first = run(client.chat(MSG, parse=parse_score))  # garbage, then a score: both replies are billed
    rest = run(client.chat_many([ChatRequest([{"role": "user", "content": "问" * i}], parse_score)
                                 for i in range(1, 5)]))
    usages = judge_server.usages
    prompt = sum(u["prompt_tokens"] for u in usages)
    completion = sum(u["completion_tokens"] for u in usages)
    assert len(usages) == 6 and client.stats.prompt_tokens == prompt
    assert client.stats.completion_tokens == completion
    assert client.stats.estimated_cost == pytest.approx((prompt * 1.0 + completion * 2.0) / 1e6)
    assert first.usage == {k: usages[0][k] + usages[1][k] for k in ("prompt_tokens", "completion_tokens")}
    assert [r.usage["prompt_tokens"] for r in rest] == [1, 2, 3, 4]
    assert client.stats.as_dict()["requests_sent"] == 6


def test_client_survives_successive_event_loops(judge_server):
    client = make_client(judge_server.base_url)
    assert run(client.chat(MSG)).text == run(client.chat(MSG)).text


def test_a_cut_off_reply_is_reasked_when_parsed_never_cached_and_returned_as_is_otherwise(judge_server, tmp_path):
    from reward.cache import ChatCache
    from tests.reward.server import Reply

    # A reply that parses but that the server says ran out of tokens may be a verdict missing its end.
    judge_server.script(fail=[], then=lambda body: Reply('{"score": 5}', finish_reason="length"))
    client = make_client(judge_server.base_url, parse_retries=1, cache=ChatCache(tmp_path / "cache"))
    with pytest.raises(JudgeError, match="finish_reason='length'"):
        run(client.chat(MSG, parse=parse_score))
    assert judge_server.count == 2 and client.stats.parse_failures == 2
    plain = run(client.chat(MSG))  # no parser (generation): the text as it is, with the server's word on it
    assert plain.text == '{"score": 5}' and plain.finish_reason == "length" and not plain.cached
    assert not run(client.chat(MSG)).cached  # a cut-off reply is never served from the cache
    judge_server.script(then=lambda body: '{"score": 4}')
    first, again = run(client.chat(MSG, parse=parse_score)), run(client.chat(MSG, parse=parse_score))
    assert (first.finish_reason, again.finish_reason, again.cached, again.parsed) == ("stop", "stop", True, 4)
