"""Pairwise model-vs-baseline judging over real HTTP: order swap, position bias, failures, the reference."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from rlmed.eval.pairwise import PairRow, combine, compare_models, compare_models_sync
from tests.reward.server import Fault, JudgeServer

KEY_ENV = "RLMED_TEST_PAIRWISE_KEY"
PROMPT = [{"role": "user", "content": "孩子发烧38.5度，精神还好，需要去医院吗？"}]
DOCTOR = "先物理降温并观察精神状态，超过三天不退或精神差请及时就医。"
MARKER = "【好】"  # the scripted judge prefers the answer that carries it


def answers_of(body: dict) -> dict[str, str]:
    """The fenced answers "A" and "B" of a compare request."""
    user = body["messages"][1]["content"]
    found = re.findall(r'<(data-[0-9a-f]{16}) kind="answer" id="([AB])">\n(.*?)\n</\1>', user, flags=re.S)
    return {slot: text for _, slot, text in found}


def reply(winner: str) -> str:
    return json.dumps({"winner": winner, "rationale": f"选{winner}"}, ensure_ascii=False)


def prefers_marker(body: dict) -> str:
    got = answers_of(body)
    a, b = MARKER in got["A"], MARKER in got["B"]
    return reply("A" if a and not b else "B" if b and not a else "tie")


@pytest.fixture
def make_judge(monkeypatch, judge_server):
    from reward.judge import LLMJudge

    monkeypatch.setenv(KEY_ENV, "sk-pairwise-test")

    def make(**kwargs):
        args = dict(model="judge-test", base_url=judge_server.base_url, api_key_env=KEY_ENV, timeout_s=5.0,
                    max_retries=1, parse_retries=0, max_concurrency=4)
        judge = LLMJudge(**{**args, **kwargs})
        judge.client.backoff_base_s = judge.client.backoff_max_s = 0.01  # retries, but fast
        return judge

    return make


def rows(n: int, *, marked: str | None = "model", reference: str | None = DOCTOR) -> list[PairRow]:
    out = []
    for i in range(n):
        model, base = f"模型回答{i}：多喝水，观察体温。", f"基线回答{i}：按时服用退烧药。"
        if marked == "model":
            model += MARKER
        elif marked == "baseline":
            base += MARKER
        out.append(PairRow(prompt=PROMPT, answer=model, baseline=base, reference=reference, id=f"q{i}"))
    return out


def test_each_row_is_judged_twice_with_the_answer_slots_swapped(make_judge, judge_server: JudgeServer):
    judge_server.script(then=lambda body: reply("tie"))
    data = rows(3)
    result = asyncio.run(compare_models(make_judge(), data))
    assert judge_server.count == 2 * len(data)
    seen = [answers_of(body) for body in judge_server.received]
    for row in data:
        slots = sorted((got["A"], got["B"]) for got in seen if row.answer in got.values())
        assert slots == sorted([(row.answer, row.baseline), (row.baseline, row.answer)])
    assert [r.verdicts for r in result.rows] == [("tie", "tie")] * 3


def test_a_judge_that_always_picks_answer_a_yields_ties_not_wins(make_judge, judge_server):
    judge_server.script(then=lambda body: reply("A"))
    result = compare_models_sync(make_judge(), rows(4), model="sft", baseline="huatuo")
    assert (result.win, result.tie, result.loss, result.failed) == (0, 4, 0, 0)
    assert all(r.verdicts == ("a", "a") and r.views == ("win", "loss") for r in result.rows)
    assert result.win_rate == 0.0 and result.win_rate_with_half_ties == 0.5
    assert result.consistency == 0.0 and result.first_position_rate == 1.0  # the bias is visible, not counted


def test_a_judge_preferring_the_marked_answer_gives_wins_to_whoever_has_it(make_judge, judge_server):
    judge_server.script(then=prefers_marker)
    judge = make_judge()
    won = compare_models_sync(judge, rows(3, marked="model"))
    lost = compare_models_sync(judge, rows(2, marked="baseline"))
    assert (won.win, won.tie, won.loss, won.win_rate) == (3, 0, 0, 1.0)
    assert all(r.verdicts == ("a", "b") and r.rationales == ("选A", "选B") for r in won.rows)
    assert (lost.win, lost.tie, lost.loss, lost.win_rate, lost.loss_rate) == (0, 0, 2, 0.0, 1.0)
    assert won.usage["prompt_tokens"] > 0 and won.consistency == 1.0


def test_a_request_that_fails_after_retries_makes_the_row_failed_not_a_tie(make_judge, judge_server):
    # Rows 0..2: the model's answer carries the marker and wins. Row 3: whenever its model answer sits in slot A
    # the server answers 500, every time, so that one order fails after the client's retry.
    def responder(body):
        if "模型回答3" in answers_of(body)["A"]:
            return Fault("status", 500)
        return prefers_marker(body)

    judge_server.script(then=responder)
    result = compare_models_sync(make_judge(), rows(4))
    failed = result.rows[3]
    assert failed.outcome == "failed" and failed.verdicts == (None, "b") and "500" in failed.errors[0]
    assert (result.win, result.tie, result.loss, result.failed, result.judged) == (3, 0, 0, 1, 3)
    assert result.win_rate == 1.0  # over the judged rows only
    assert judge_server.count == 2 * 4 + 1  # the failing order was sent twice (one retry)


def test_all_rows_failed_gives_no_rates_rather_than_zero(make_judge, judge_server):
    judge_server.script(then=lambda body: Fault("status", 400))  # a 4xx is not retried
    result = compare_models_sync(make_judge(), rows(2))
    assert result.failed == 2 and result.judged == 0
    assert result.win_rate is None and result.win_rate_with_half_ties is None
    assert result.summary()["failed"] == 2


def test_the_doctors_reply_reaches_both_requests_as_the_reference(make_judge, judge_server):
    judge_server.script(then=lambda body: reply("tie"))
    with_ref = rows(1)[0]
    without_ref = PairRow(prompt=PROMPT, answer="另一个回答", baseline="另一个基线", reference=None)
    compare_models_sync(make_judge(), [with_ref, without_ref])
    sent = {key: [b["messages"][1]["content"] for b in judge_server.received if row.answer in answers_of(b).values()]
            for key, row in (("ref", with_ref), ("none", without_ref))}
    assert len(sent["ref"]) == len(sent["none"]) == 2
    assert all(DOCTOR in content for content in sent["ref"])  # in both orders
    assert not any(DOCTOR in content for content in sent["none"])
    assert all("本题没有参考答案" in content for content in sent["none"])  # the judge is told there is none


def test_orders_that_disagree_or_half_decide_are_ties():
    assert combine("win", "win") == "win" and combine("loss", "loss") == "loss"
    assert combine("win", "loss") == combine("win", "tie") == combine("tie", "loss") == combine("tie", "tie") == "tie"
    assert combine(None, "win") == combine("tie", None) == "failed"


def test_sync_wrapper_refuses_to_run_inside_an_event_loop():
    async def inside():
        with pytest.raises(RuntimeError, match="running event loop"):
            compare_models_sync(object(), [])

    asyncio.run(inside())
