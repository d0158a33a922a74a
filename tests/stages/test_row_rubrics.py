"""A data row's own rubric (HealthBench layout, no reference, no rubrics file) grades the samples of ai_feedback,
grpo and ppo through RubricJudge: every request carries the criteria of the row its answer came from."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from tests.conftest import write_jsonl
from tests.reward.server import JudgeServer
from tests.stages.conftest import manifest, run_recipe
from tests.stages.test_rubrics_stage import fenced as fenced_parts

ROWS = 12


def fenced(text: str, kind: str) -> list[str]:
    return [body for _, body in fenced_parts(text, kind)]


def grader(body: dict) -> str:
    """Grades only criteria of the question they came with ("hb-K" in both); a mixed-up join gets an unparseable
    reply, so the sample goes unscored and the test sees it. Met or not: a hash of answer and criterion."""
    user = body["messages"][1]["content"]
    if not joined_right(body):
        return "these criteria belong to another question"
    answer = fenced(user, "answer")[0]
    criteria = fenced(user, "criterion")
    verdicts = [{"id": n, "explanation": "逐条检查",
                 "criteria_met": hashlib.sha256((answer + c).encode()).digest()[0] % 2 == 1}
                for n, c in enumerate(criteria, 1)]
    return json.dumps({"items": verdicts} if len(verdicts) > 1 else verdicts[0], ensure_ascii=False)


@pytest.fixture
def server():
    with JudgeServer() as running:
        running.script(then=grader)
        yield running


def healthbench_rows(tmp_path: Path) -> Path:
    # Every row has the same two positive criteria texts but its own id prefix, and one pitfall.
    return write_jsonl(tmp_path / "healthbench.jsonl", [
        {"prompt_id": f"hb-{k}",
         "prompt": [{"role": "user", "content": f"问题{k}：孩子发烧{37 + k % 3}度，需要去医院吗？"}],
         "rubrics": [{"criterion": f"hb-{k} 说明何时需要就医", "points": 5, "tags": ["axis:completeness"]},
                     {"criterion": f"hb-{k} 给出退烧药剂量", "points": 3, "tags": ["axis:accuracy"]},
                     {"criterion": f"hb-{k} 建议使用抗生素", "points": -4, "tags": ["axis:accuracy"]}],
         "example_tags": ["theme:emergency"]}
        for k in range(ROWS)])


def judge(server: JudgeServer) -> dict:
    # No rubrics file: each sample's items come from its row (Sample.metadata), the mode is one call per item.
    return {"_component_": "reward.rubric.RubricJudge", "model": "judge-test", "base_url": server.base_url,
            "api_key_env": None, "timeout_s": 10.0, "parse_retries": 0, "mode": "per_criterion"}


def joined_right(body: dict) -> bool:
    user = body["messages"][1]["content"]
    asked = re.search(r"问题(\d+)", fenced(user, "dialogue")[0]).group(1)
    return all(c.startswith(f"hb-{asked} ") for c in fenced(user, "criterion"))


def criteria_sent(server: JudgeServer) -> list[str]:
    return [c for body in server.received for c in fenced(body["messages"][1]["content"], "criterion")]


def test_ai_feedback_grades_each_candidate_by_its_rows_rubric(tmp_path, server, tiny_model):
    stage = {"id": "fb", "kind": "ai_feedback", "inputs": {"model": str(tiny_model),
                                                           "prompts": str(healthbench_rows(tmp_path))},
             "args": {"samples_per_prompt": 2, "max_new_tokens": 8}, "reward": judge(server)}
    assert run_recipe(tmp_path, [stage]) == 0
    scored = [json.loads(line) for line in (tmp_path / "run" / "fb" / "scored.jsonl").read_text().splitlines()]
    assert len(scored) == 2 * ROWS and all(r["score"] is not None and 0.0 <= r["score"] <= 1.0 for r in scored)
    assert all(r["reference"] is None and r["metadata"]["prompt_id"].startswith("hb-") for r in scored)
    assert {k.split(":", 1)[0] for r in scored for k in r["parts"]} >= {"item", "tag"}
    assert len(server.received) == 3 * 2 * ROWS  # one call per criterion per candidate, none failed
    assert manifest(tmp_path, "fb")["metrics"]["failed_scores"] == 0


def test_grpo_reward_gets_each_rows_rubric_through_trls_dataset(tmp_path, server, tiny_model):
    stage = {"id": "grpo", "kind": "grpo", "inputs": {"model": str(tiny_model),
                                                      "prompts": str(healthbench_rows(tmp_path))},
             "args": {"heldout_prompts": 4, "heldout_max_new_tokens": 8}, "reward": judge(server),
             "trainer": {"max_steps": 2, "per_device_train_batch_size": 8, "num_generations": 4,
                         "max_completion_length": 8, "logging_steps": 1, "learning_rate": 1e-3}}
    assert run_recipe(tmp_path, [stage]) == 0
    m = manifest(tmp_path, "grpo")["metrics"]
    assert m["rewards_unscored"] == 0 and m["rewards_scored"] == 2 * 8
    assert m["heldout_reward_start"] is not None and m["heldout_reward_end"] is not None
    held_out = {f"hb-{k} " for k in range(4)}
    trained = {c.split(" ")[0] + " " for c in criteria_sent(server)} - held_out
    assert trained and trained <= {f"hb-{k} " for k in range(4, ROWS)}


def test_ppo_reward_gets_each_rows_rubric(tmp_path, server, tiny_model):
    stage = {"id": "ppo", "kind": "ppo", "inputs": {"model": str(tiny_model),
                                                    "prompts": str(healthbench_rows(tmp_path))},
             "args": {"heldout_prompts": 4, "heldout_max_new_tokens": 8, "num_rollouts": 2, "rollout_batch_size": 8,
                      "ppo_epochs": 1, "max_new_tokens": 8, "samples_logged": 8},
             "reward": judge(server),
             "trainer": {"learning_rate": 1e-3, "per_device_train_batch_size": 8}}
    assert run_recipe(tmp_path, [stage]) == 0
    m = manifest(tmp_path, "ppo")["metrics"]
    assert m["rewards_unscored"] == 0 and m["rewards_scored"] == 2 * 8
    assert m["heldout_reward_start"] is not None and m["heldout_reward_end"] is not None
    rows = [json.loads(line) for line in (tmp_path / "run" / "ppo" / "tables" / "samples.jsonl").open(encoding="utf-8")]
    assert len(rows) == 16 and all(0.0 <= r["reward"] <= 1.0 for r in rows)
    for name in ("heldout_start.jsonl", "heldout_end.jsonl"):
        held = [json.loads(line) for line in (tmp_path / "run" / "ppo" / name).read_text().splitlines()]
        assert len(held) == 4 and all(r["score"] is not None for r in held)
    # Every call graded its own row's items (up to 3 x (2 x 4 held-out + 16 rollout answers); repeats are cached).
    assert all(joined_right(body) for body in server.received) and 0 < len(server.received) <= 3 * (2 * 4 + 16)
