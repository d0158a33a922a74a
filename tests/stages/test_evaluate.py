"""evaluate: every metric family on the run's models, generations saved, a position-biased judge gives ties,
contamination with a training input is reported, and report.md / results.json / the W&B-ready table exist;
comparisons, breakdowns and stage effects are computed, and recomputed from the saved rows."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from rlmed.cli import main
from tests.conftest import write_jsonl
from tests.reward.server import JudgeServer
from tests.stages.conftest import manifest, run_recipe

LEAKED = "宝宝发烧三天了还要观察吗？"


def eval_sets(tmp_path):
    dialogues = write_jsonl(tmp_path / "dialogues.jsonl", [
        {"prompt": LEAKED, "reference": "三天不退请到医院查血常规。", "condition": "发热", "red_flag": True},
        {"prompt": "孩子咳嗽有痰怎么办？", "reference": "多喝水，拍背排痰，气促就医。", "condition": "咳嗽",
         "red_flag": False}])
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
            {"id": "sft", "kind": "sft", "inputs": {"model": str(other), "data": str(train)},
             "args": {"validation_fraction": 0.0}, "trainer": {"max_steps": 1, "max_length": 64}},
            {"id": "eval", "kind": "evaluate", "inputs": {"models": ["$sft.model", str(other)], "data": eval_sets(tmp_path)},
             "args": {"baseline": "other", "max_new_tokens": 8, "breakdown_by": ["condition", "red_flag"],
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
    # Rows carry what their metric needs (recompute reads them), and the dialogue rows their reward score.
    by_set = {s: [g for g in generations if g["set"] == s] for s in ("dialogues", "mcq", "kb")}
    assert [(g["kind"], g["options"], g["answer_key"]) for g in by_set["mcq"]] == [
        ("choice", ["体温升高", "皮疹", "腹泻", "咳嗽"], "A"), ("choice", ["便秘", "口腔疱疹", "耳痛", "鼻塞"], "B")]
    assert [(g["kind"], g["items"]) for g in by_set["kb"]] == [("hitrate", ["儿童发热", "疼痛"])]
    for model in ("sft", "other"):
        rows = [json.loads(line) for line in (stage_dir / "generations" / f"{model}.jsonl").open(encoding="utf-8")]
        scores = [g["reward"] for g in rows if g["set"] == "dialogues"]
        assert len(scores) == 2 and all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in scores), scores
        assert all("reward" not in g for g in rows if g["set"] != "dialogues")  # exact metrics there, no source
        assert results["reward"][model]["dialogues/reward_mean"] == pytest.approx(sum(scores) / len(scores))
    assert not list((stage_dir / "generations").glob("*.rank*.jsonl"))  # one process: no rank shards
    report = (stage_dir / "report.md").read_text(encoding="utf-8")
    assert "sft" in report and "other" in report and "mcq/accuracy" in report
    # sft started from `other`, so "What each stage did" compares the two, on the first choice set's accuracy.
    (effect,) = results["stage_effects"]
    assert (effect["stage"], effect["compared_with"], effect["target"]) == ("sft", "other", "mcq/accuracy")
    assert effect["verdict"] == "too few rows" and effect["n"] == 2  # two rows: an interval, no verdict
    assert report.index("## What each stage did") < report.index("## Models")
    assert set(results["comparisons"]["sft"]) == set(results["metrics"]["sft"]) | set(results["reward"]["sft"])
    assert results["breakdowns"]["red_flag"]["true"]["n"] == {"dialogues": 1}
    assert list(results["breakdowns"]["condition"]) == ["发热", "咳嗽"]
    assert [g.get("tags") for g in generations if g["set"] == "dialogues"] == [
        {"condition": "发热", "red_flag": True}, {"condition": "咳嗽", "red_flag": False}]
    m = manifest(tmp_path, "eval")["metrics"]
    assert m["contaminated_rows"] == 1 and m["contamination"][0]["source"] == f"{train}:1"
    table = [json.loads(line) for line in (stage_dir / "tables" / "comparison.jsonl").open(encoding="utf-8")]
    assert {row["model"] for row in table} == {"sft", "other"}
    pairwise = [json.loads(line) for line in (stage_dir / "tables" / "pairwise.jsonl").open(encoding="utf-8")]
    assert [(r["model"], r["tie"]) for r in pairwise] == [("sft", 2)]
    versus = [json.loads(line) for line in (stage_dir / "tables" / "vs_baseline.jsonl").open(encoding="utf-8")]
    assert {(r["model"], r["baseline"]) for r in versus} == {("sft", "other")} and len(versus) == len(
        results["comparisons"]["sft"])


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


# A composite reward, so rows carry parts ("rules.referral": the first dialogue names a red flag, 三天).
PARTS_REWARD = {"_component_": "reward.composite.Composite", "normalize": "none", "sources": [
    {"_component_": "reward.similarity.ReferenceSimilarity", "metric": "char_f1"},
    {"_component_": "reward.rules.Rules", "red_flag_terms": ["三天"], "referral_phrases": ["医院"]}]}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_model):
    """One evaluate run (all three set kinds, two models, a composite reward source, breakdowns by condition and
    red_flag), shared: each test edits its own copy."""
    tmp_path = tmp_path_factory.mktemp("evaluated")
    other = tmp_path / "other" / "model"
    shutil.copytree(tiny_model, other)
    stage = {"id": "eval", "kind": "evaluate",
             "inputs": {"models": [str(tiny_model), str(other)], "data": eval_sets(tmp_path)},
             "args": {"max_new_tokens": 8, "breakdown_by": ["condition", "red_flag"]}, "reward": PARTS_REWARD}
    assert run_recipe(tmp_path, [stage]) == 0
    return tmp_path / "run", tiny_model.parent.name


def _copy_run(evaluated, tmp_path):
    run_dir, name = evaluated
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy, copy / "eval" / "generations" / f"{name}.jsonl", name


def _rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _write_rows(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def test_report_recompute_reads_the_edited_generations(evaluated, tmp_path, caplog):
    run_dir, generations, name = _copy_run(evaluated, tmp_path)
    results_path = run_dir / "eval" / "results.json"
    before = json.loads(results_path.read_text(encoding="utf-8"))
    old = before["metrics"][name]["mcq/accuracy"]
    # Both answers right, or (if the tiny model already got both) both unanswered: the accuracy must change.
    new, cell = (0.0, "0") if old == 100.0 else (100.0, "100.00")
    rows = _rows(generations)
    for row in rows:
        if row["set"] == "mcq":
            row["answer"] = "不知道" if new == 0.0 else f"答案：{row['answer_key']}"
    _write_rows(generations, rows)

    caplog.set_level(logging.INFO, logger="rlmed.eval.recompute")
    assert main(["report", str(run_dir), "--recompute"]) == 0
    after = json.loads(results_path.read_text(encoding="utf-8"))
    assert after["metrics"][name]["mcq/accuracy"] == new
    # Untouched rows give back exactly what the stage computed: the stage and recompute share the code.
    unchanged = {k: v for k, v in before["metrics"][name].items() if not k.startswith("mcq/")}
    assert {k: after["metrics"][name][k] for k in unchanged} == unchanged
    # The reward means cannot be recomputed without the source: kept, and the log says so.
    assert after["reward"] == before["reward"] and after["recomputed"]["kept"] == ["reward"]
    assert any("kept reward" in r.getMessage() for r in caplog.records)
    report = (run_dir / "eval" / "report.md").read_text(encoding="utf-8")
    assert f"| mcq/accuracy | {cell} |" in report
    assert "Metrics recomputed from the saved generations" in report


@pytest.mark.parametrize("damage, expected", [
    ("older", ":1: the row has no 'kind'"),
    ("torn", ":2: not valid JSON"),
    ("missing", ": no such file"),
    ("truncated", ": eval set 'mcq' has row indices [0]; expected each of 0..1 once"),
])
def test_report_recompute_names_the_broken_generations_file(evaluated, tmp_path, capsys, damage, expected):
    run_dir, generations, _ = _copy_run(evaluated, tmp_path)
    rows = _rows(generations)
    if damage == "older":  # rows as rlmed wrote them before they carried their kind
        _write_rows(generations, [{k: r[k] for k in ("set", "index", "prompt", "answer", "reference")} for r in rows])
    elif damage == "torn":
        lines = generations.read_text(encoding="utf-8").splitlines()
        generations.write_text("\n".join([lines[0], lines[1][:20], *lines[2:]]) + "\n", encoding="utf-8")
    elif damage == "missing":
        generations.unlink()
    else:
        _write_rows(generations, [r for r in rows if not (r["set"] == "mcq" and r["index"] == 1)])
    results = (run_dir / "eval" / "results.json").read_bytes()

    assert main(["report", str(run_dir), "--recompute"]) == 1
    err = capsys.readouterr().err
    assert f"{generations}{expected}" in err, err
    if damage in ("older", "missing"):
        assert "re-run the evaluate stage" in err and "--only eval" in err
    assert (run_dir / "eval" / "results.json").read_bytes() == results  # nothing written on failure


STATISTICS = ("comparisons", "breakdowns", "stage_effects", "reward")


def test_report_recompute_reproduces_the_intervals_and_follows_edited_rows(evaluated, tmp_path):
    run_dir, _, _ = _copy_run(evaluated, tmp_path)
    results_path = run_dir / "eval" / "results.json"
    before = json.loads(results_path.read_text(encoding="utf-8"))
    assert before["statistics"]["seed"] == 1 and before["statistics"]["resamples"] == 2000  # the recipe's seed
    # Rows carry the reward parts, and results their means, per set and per breakdown group.
    assert "dialogues/reward.rules.referral" in before["reward"]["other"]
    red = before["breakdowns"]["red_flag"]["true"]
    assert red["n"] == {"dialogues": 1} and "dialogues/reward.rules.referral" in red["metrics"]["other"]
    assert "dialogues/reward.rules.referral" in before["comparisons"]["other"]

    assert main(["report", str(run_dir), "--recompute"]) == 0
    again = json.loads(results_path.read_text(encoding="utf-8"))
    assert {k: again[k] for k in STATISTICS} == {k: before[k] for k in STATISTICS}  # the same draws: exactly

    path = run_dir / "eval" / "generations" / "other.jsonl"
    rows = _rows(path)
    first = next(r for r in rows if r["set"] == "dialogues")
    first["answer"] = first["reference"]  # a perfect answer where the copy of the baseline answered as it did
    first["reward_parts"]["rules.referral"] = 1.0 - first["reward_parts"]["rules.referral"]
    _write_rows(path, rows)
    assert main(["report", str(run_dir), "--recompute"]) == 0
    edited = json.loads(results_path.read_text(encoding="utf-8"))
    rouge = edited["comparisons"]["other"]["dialogues/rouge_l"]
    assert rouge["diff"] > 0 and rouge != before["comparisons"]["other"]["dialogues/rouge_l"]
    referral = "dialogues/reward.rules.referral"
    assert edited["reward"]["other"][referral] != before["reward"]["other"][referral]  # parts read from the rows
    assert edited["comparisons"]["other"][referral]["diff"] == pytest.approx(
        edited["reward"]["other"][referral] - edited["reward"][before["baseline"]][referral])
    group = edited["breakdowns"]["red_flag"]["true"]["comparisons"]["other"]["dialogues/rouge_l"]
    assert group["diff"] > 0
