"""The `rubrics` stage against the local judge server, and RubricJudge as the reward of ai_feedback through the
runner: written rubrics join back to the prompts without ids."""

from __future__ import annotations

import hashlib
import json
import re
import stat
from pathlib import Path

import pytest

from reward.base import Sample, score_sync
from reward.rubric import RubricJudge, load_rubric_file, prompt_key
from rlmed.recipe import RecipeError, load_recipe
from tests.conftest import write_jsonl, write_recipe
from tests.reward.server import JudgeServer
from tests.stages.conftest import manifest, run_recipe

PHONE = "13812345678"
CATEGORIES = [("Essential", 8), ("Important", 3), ("Optional", 2), ("Pitfall", -5)]


def fenced(text: str, kind: str) -> list[str]:
    return re.findall(rf'<(data-[0-9a-f]{{16}}) kind="{kind}"[^>]*>\n(.*?)\n</\1>', text, flags=re.S)


def llm(body: dict) -> str:
    """Writer and grader in one scripted model. Writing (a doctor's reply, no answer): eight items naming the
    reply's first words, except for the prompt about eczema, which never gets a valid rubric (three items).
    Grading: criteria_met drawn from a hash of the answer and the criterion, so candidates score differently."""
    user = body["messages"][1]["content"]
    answers = fenced(user, "answer")
    if not answers:
        if "湿疹" in user:
            return json.dumps({"rubrics": [{"criterion": "x", "category": "Essential", "points": 8}] * 3})
        doctor = fenced(user, "reference")[0][1]
        items = [{"criterion": f"第{k}条：{doctor[:8]}", "category": CATEGORIES[k % 4][0],
                  "points": CATEGORIES[k % 4][1]} for k in range(8)]
        return json.dumps({"rubrics": items}, ensure_ascii=False)
    answer = answers[0][1]
    verdicts = [{"id": n, "explanation": "按细则检查",
                 "criteria_met": hashlib.sha256((answer + criterion).encode()).digest()[0] % 2 == 1}
                for n, (_, criterion) in enumerate(fenced(user, "criterion"), 1)]
    return json.dumps({"items": verdicts} if len(verdicts) > 1 else verdicts[0], ensure_ascii=False)


@pytest.fixture
def server():
    with JudgeServer() as running:
        running.script(then=llm)
        yield running


def dialogues(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "dialogues.jsonl", [
        {"messages": [{"role": "user", "content": f"孩子发烧39度，电话{PHONE}，怎么办？"},
                      {"role": "assistant", "content": "先物理降温，超过38.5度可用布洛芬。"},
                      {"role": "user", "content": "还要去医院吗？"},
                      {"role": "assistant", "content": "精神差或抽搐要立即就医。"}]},
        {"question": "宝宝湿疹反复，能用激素药膏吗？", "answer": "可短期使用弱效激素。"},
        {"question": "孩子腹泻三天怎么办？", "answer": "注意补液，防止脱水。"},
        {"question": "孩子腹泻三天怎么办？", "answer": "口服补液盐。"},  # the same prompt again
    ])


def writer(server: JudgeServer, **more) -> dict:
    return {"_component_": "reward.rubric.RubricJudge", "model": "judge-test", "base_url": server.base_url,
            "api_key_env": None, "timeout_s": 10.0, "parse_retries": 1, **more}


def rubrics_stage(tmp_path: Path, server: JudgeServer, **args) -> dict:
    return {"id": "rub", "kind": "rubrics", "inputs": {"prompts": str(dialogues(tmp_path))},
            "args": {"writer": writer(server), "max_failed_fraction": 0.5, **args}}


def test_rubrics_stage_writes_a_private_readable_file_that_the_judge_joins_without_ids(tmp_path, server):
    assert run_recipe(tmp_path, [rubrics_stage(tmp_path, server)], defaults={}) == 0  # the stage takes no seed
    path = tmp_path / "run" / "rub" / "rubrics.jsonl"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # patient text
    text = path.read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines()]
    assert "湿疹" not in text and "第0条" in text  # readable as written: no escaped Chinese
    assert [len(r["prompt"]) for r in rows] == [1, 3, 1]  # two doctor turns, then the diarrhoea prompt once
    assert all(r["prompt_id"] == prompt_key(r["prompt"]) for r in rows)
    assert rows[2]["reference"] == "注意补液，防止脱水。"  # the first doctor reply of a repeated prompt
    first = rows[0]["rubrics"]
    assert len(first) == 8 and first[3] == {"criterion": first[3]["criterion"], "points": -5,
                                            "tags": ["category:pitfall"]}
    assert PHONE not in json.dumps(server.received, ensure_ascii=False)  # masked before it was sent

    metrics = manifest(tmp_path, "rub")["metrics"]
    assert (metrics["prompts"], metrics["written"], metrics["failed"], metrics["repeated_prompts"]) == (4, 3, 1, 1)
    assert metrics["items_per_prompt_mean"] == 8.0 and metrics["items_by_tag"]["category:essential"] == 6
    assert "3 items, expected 7 to 20" in metrics["first_errors"][0]
    assert metrics["judge"]["requests_sent"] == 3 + 2  # three good replies, the bad one asked twice

    # The written file as a reward: samples of the same dialogues, no ids anywhere, are graded by their rubric.
    judge = RubricJudge(model="judge-test", base_url=server.base_url, api_key_env=None, rubrics=str(path))
    judge.client.progress = False
    samples = [Sample(row["prompt"], "多喝水，观察精神。") for row in rows]
    scores = score_sync(judge, samples)
    assert all(s.value is not None and "tag:category:essential" in s.parts for s in scores)
    assert set(load_rubric_file(path)) == {r["prompt_id"] for r in rows}

    # A forced re-run asks nothing again: every reply that validated came from the judge cache.
    sent = server.count
    assert run_recipe(tmp_path, [rubrics_stage(tmp_path, server)], "--only", "rub", defaults={}) == 0
    assert server.count - sent == 2  # only the prompt whose reply never validated (nothing bad is cached)


def test_the_stage_fails_when_too_many_prompts_get_no_rubric(tmp_path, server):
    assert run_recipe(tmp_path, [rubrics_stage(tmp_path, server, max_failed_fraction=0.0)], defaults={}) != 0
    assert not (tmp_path / "run" / "rub" / "manifest.json").exists()


def test_a_bad_writer_block_is_reported_when_the_recipe_loads(tmp_path, server):
    stage = rubrics_stage(tmp_path, server)
    stage["args"]["writer"] = writer(server, temprature=0.2)
    path = write_recipe(tmp_path / "recipe.yaml", {"name": "t", "run_dir": str(tmp_path / "run"), "stages": [stage]})
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert "args: writer: temprature: unknown argument" in "\n".join(info.value.problems)


def test_rubric_judge_is_the_reward_of_ai_feedback_run_through_the_runner(tmp_path, server, tiny_model):
    feedback = {"id": "fb", "kind": "ai_feedback", "inputs": {"model": str(tiny_model),
                                                              "prompts": str(dialogues(tmp_path))},
                "args": {"samples_per_prompt": 2, "max_new_tokens": 12, "max_failed_fraction": 0.5},
                "reward": {**writer(server), "rubrics": "$rub.rubrics", "mode": "all_at_once"}}
    assert run_recipe(tmp_path, [rubrics_stage(tmp_path, server), feedback]) == 0
    scored = [json.loads(line) for line in (tmp_path / "run" / "fb" / "scored.jsonl").read_text().splitlines()]
    eczema = [r for r in scored if "湿疹" in r["prompt"][-1]["content"]]
    assert eczema and all(r["score"] is None and r["error"].startswith("no rubric") for r in eczema)
    graded = [r for r in scored if r not in eczema]
    assert len(graded) == 8 and all(0.0 <= r["score"] <= 1.0 for r in graded)
    assert all(len([k for k in r["parts"] if k.startswith("item:")]) == 8 for r in graded)
    metrics = manifest(tmp_path, "fb")["metrics"]
    judge = metrics["judge"]
    assert metrics["failed_scores"] == 2 and judge["requests_sent"] + judge["cache_hits"] == 8  # one per sample


def test_grpo_and_rloo_rewards_grade_through_the_rubric_file_by_prompt(tmp_path, server):
    """The trl reward adapter grpo and rloo use passes bare prompts (no ids, no metadata): the join is the prompt."""
    import asyncio

    from rlmed.rl.rewards import RewardCounter, trl_reward

    prompt = [{"role": "user", "content": "孩子腹泻三天怎么办？"}]
    path = write_jsonl(tmp_path / "rubrics.jsonl", [{"prompt_id": prompt_key(prompt), "prompt": prompt, "rubrics": [
        {"criterion": "提到补液", "points": 5, "tags": ["category:essential"]}]}])
    judge = RubricJudge(model="judge-test", base_url=server.base_url, api_key_env=None, rubrics=str(path))
    judge.client.progress = False
    counter = RewardCounter()
    reward = trl_reward(judge, "rubric", counter)
    values = asyncio.run(reward(prompts=[prompt, prompt, [{"role": "user", "content": "别的问题"}]],
                                completions=["多补液", "口服补液盐", "答"], reference=["补液", "补液", "答"]))
    assert values[0] in (0.0, 1.0) and values[1] in (0.0, 1.0) and values[2] is None
    assert (counter.total, counter.unscored) == (3, 1) and "no rubric" in counter.first_errors[0]
