"""evaluate: every metric family on the run's models, generations saved, a position-biased judge gives ties,
contamination with a training input is reported, and report.md / results.json / the W&B-ready table exist."""

from __future__ import annotations

import json
import shutil

from tests.conftest import write_jsonl
from tests.reward.server import JudgeServer
from tests.stages.conftest import manifest, run_recipe

LEAKED = "宝宝发烧三天了还要观察吗？"


def eval_sets(tmp_path):
    dialogues = write_jsonl(tmp_path / "dialogues.jsonl", [
        {"prompt": LEAKED, "reference": "三天不退请到医院查血常规。"},
        {"prompt": "孩子咳嗽有痰怎么办？", "reference": "多喝水，拍背排痰，气促就医。"}])
    mcq = write_jsonl(tmp_path / "mcq.jsonl", [
        {"question": "发热的常见表现是？", "options": ["体温升高", "皮疹", "腹泻", "咳嗽"], "answer": "A"},
        {"question": "手足口病的常见表现是？", "options": ["便秘", "口腔疱疹", "耳痛", "鼻塞"], "answer": "B"}])
    kb = write_jsonl(tmp_path / "kb.jsonl", [{"question": "布洛芬的适应病症是什么？", "items": ["儿童发热", "疼痛"]}])
    return [str(dialogues), str(mcq), str(kb)]


def test_evaluate_compares_models_on_every_metric_family_and_writes_the_report(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("RLMED_TEST_JUDGE_KEY", "sk-eval-test")
    other = tmp_path / "other" / "model"
    shutil.copytree(tiny_model, other)
    train = write_jsonl(tmp_path / "train.jsonl", [
        {"messages": [{"role": "user", "content": LEAKED}, {"role": "assistant", "content": "再观察一天。"}]}])
    with JudgeServer() as judge:
        judge.script(then=lambda body: json.dumps({"winner": "A", "rationale": "总选A"}, ensure_ascii=False))
        stages = [
            {"id": "sft", "kind": "sft", "inputs": {"model": str(tiny_model), "data": str(train)},
             "args": {"validation_fraction": 0.0}, "trainer": {"max_steps": 1, "max_length": 64}},
            {"id": "eval", "kind": "evaluate", "inputs": {"models": ["$sft.model", str(other)], "data": eval_sets(tmp_path)},
             "args": {"baseline": "other", "max_new_tokens": 8,
                      "judge": {"_component_": "reward.judge.LLMJudge", "model": "judge-test",
                                "base_url": judge.base_url, "api_key_env": "RLMED_TEST_JUDGE_KEY"}},
             "reward": {"_component_": "reward.similarity.ReferenceSimilarity", "metric": "rouge_l"}},
        ]
        assert run_recipe(tmp_path, stages) == 0
        assert judge.count == 2 * 2  # two dialogue rows, each judged in both answer orders
    stage_dir = tmp_path / "run" / "eval"
    results = json.loads((stage_dir / "results.json").read_text(encoding="utf-8"))
    assert set(results["models"]) == {"sft", "other"} and results["baseline"] == "other"
    kinds = {name: s["kind"] for name, s in results["eval_sets"].items()}
    assert kinds == {"dialogues": "generation", "mcq": "choice", "kb": "hitrate"}
    for model in ("sft", "other"):
        keys = set(results["metrics"][model])
        assert {"dialogues/bleu_4", "dialogues/rouge_l", "dialogues/distinct_2", "mcq/accuracy",
                "kb/hit_rate_3"} <= keys
        assert "dialogues/reward_mean" in results["reward"][model]
    # A judge that always picks the first answer cancels out over the two orders: ties, not wins.
    assert {k: results["pairwise"]["sft"][k] for k in ("win", "tie", "loss", "failed")} == \
        {"win": 0, "tie": 2, "loss": 0, "failed": 0}
    (leak,) = results["contamination"]
    assert leak["eval_set"] == "dialogues" and leak["row"] == 0 and leak["source"] == f"{train}:1"
    generations = [json.loads(line) for line in (stage_dir / "generations" / "sft.jsonl").open(encoding="utf-8")]
    assert len(generations) == 2 + 2 + 1 and {g["set"] for g in generations} == {"dialogues", "mcq", "kb"}
    report = (stage_dir / "report.md").read_text(encoding="utf-8")
    assert "sft" in report and "other" in report and "mcq/accuracy" in report
    m = manifest(tmp_path, "eval")["metrics"]
    assert m["contaminated_rows"] == 1 and m["contamination"][0]["source"] == f"{train}:1"
    table = [json.loads(line) for line in (stage_dir / "tables" / "comparison.jsonl").open(encoding="utf-8")]
    assert {row["model"] for row in table} == {"sft", "other"}
    pairwise = [json.loads(line) for line in (stage_dir / "tables" / "pairwise.jsonl").open(encoding="utf-8")]
    assert [(r["model"], r["tie"]) for r in pairwise] == [("sft", 2)]


def test_meds_ins_template_lays_out_the_solved_cases(tmp_path, tiny_model):
    sets = eval_sets(tmp_path)
    stage = {"id": "eval", "kind": "evaluate", "inputs": {"models": [str(tiny_model)], "data": [sets[1]]},
             "args": {"max_new_tokens": 4, "few_shot": 1, "choice_template": "meds_ins"}}
    assert run_recipe(tmp_path, [stage]) == 0
    name = tiny_model.parent.name
    (row,) = [json.loads(line) for line in (tmp_path / "run" / "eval" / "generations" / f"{name}.jsonl").open()]
    prompt = row["prompt"][-1]["content"]
    assert prompt.startswith("Case1: Input: 发热的常见表现是？") and ", Output: A\n" in prompt
    assert "Please learn from the few-shot cases to see what content you have to output. Input: 手足口病" in prompt
