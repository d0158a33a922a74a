"""evaluate on benchmark files in their own layouts (tests/fixtures/benchmarks: invented content): CMB-Exam (with a
multiple-answer question), CMExam, MedQA (USMLE and MCMLE), a CMMLU subject CSV with its dev file, a MedS-Bench task
file, HealthBench graded by a rubric source, and CMB-Clin cases judged against their solutions. The report gives
every set's score, interval and unanswerable share, HealthBench's clipped score, per-tag scores and bootstrap
standard deviations, and a recompute from the saved rows gives the same numbers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from reward.base import Score
from rlmed.cli import main
from tests.stages.conftest import run_recipe

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "benchmarks"
MET = ["emergency department", "weight-based", "Explains", "plain language", "waiting a few more days"]


class StandInRubrics:
    """A user-style reward source, as a rubric grader is one: a criterion counts as met when it contains one of
    `met` (the answer is not read, so every score is known from the fixture); a row without rubrics (CMB-Clin) scores
    the share of its reference's characters found in the answer. Logs the prompt_ids it was given."""

    def __init__(self, met: list[str], log: str) -> None:
        self.met, self.log = met, Path(log)

    async def score(self, samples):
        out = []
        for sample in samples:
            rubrics = sample.metadata.get("rubrics")
            if rubrics is None:
                ref = sample.reference or ""
                out.append(Score(sum(c in sample.completion for c in ref) / max(len(ref), 1)))
                continue
            with self.log.open("a", encoding="utf-8") as f:
                f.write(sample.metadata["prompt_id"] + "\n")
            met = [any(w in r["criterion"] for w in self.met) for r in rubrics]
            parts = {f"criterion:{i}": float(m) for i, m in enumerate(met)}
            for tag in {t for r in rubrics for t in r["tags"]}:
                items = [(r, m) for r, m in zip(rubrics, met) if tag in r["tags"]]
                positive = sum(r["points"] for r, _ in items if r["points"] > 0)
                if positive:
                    parts[f"tag:{tag}"] = sum(r["points"] for r, m in items if m) / positive
            out.append(Score(sum(r["points"] for r, m in zip(rubrics, met) if m)
                             / sum(r["points"] for r in rubrics if r["points"] > 0), parts))
        return out


def expected_healthbench() -> tuple[float, dict[str, float]]:
    """HealthBench's arithmetic on the fixture, written out independently: per example, points of the met criteria
    over the positive points (per tag: over that tag's criteria; an example tag takes the whole example's score);
    then the mean over the examples clipped to [0, 1]."""
    rows = [json.loads(line) for line in (FIXTURES / "healthbench.jsonl").read_text(encoding="utf-8").splitlines()]
    overall, per_tag = [], {}
    for row in rows:
        graded = [(r, any(w in r["criterion"] for w in MET)) for r in row["rubrics"]]

        def score(items):
            positive = sum(r["points"] for r, _ in items if r["points"] > 0)
            return None if not positive else sum(r["points"] for r, m in items if m) / positive

        overall.append(score(graded))
        for tag in row["example_tags"]:
            per_tag.setdefault(tag, []).append(overall[-1])
        for tag in {t for r, _ in graded for t in r["tags"]}:
            found = score([(r, m) for r, m in graded if tag in r["tags"]])
            if found is not None:
                per_tag.setdefault(tag, []).append(found)
    clip = lambda values: min(1.0, max(0.0, sum(values) / len(values)))  # noqa: E731
    return clip(overall), {tag: clip(v) for tag, v in per_tag.items()}


DATA = [
    str(FIXTURES / "cmb_exam.json"),  # detected from its columns
    {"path": str(FIXTURES / "cmexam.csv"), "format": "cmexam"},
    str(FIXTURES / "medqa_us.jsonl"),
    str(FIXTURES / "medqa_mcmle.jsonl"),
    str(FIXTURES / "cmmlu" / "test" / "clinical_knowledge.csv"),  # its container says CMMLU
    str(FIXTURES / "meds_bench_mcqa.json"),
    str(FIXTURES / "healthbench.jsonl"),
    {"path": str(FIXTURES / "cmb_clin.json"), "format": "cmb_clin"},
]
CMMLU_DEV = FIXTURES / "cmmlu" / "dev" / "clinical_knowledge.csv"  # the solved examples of the subject's dev split
CHOICE_SETS = ["cmb_exam", "cmexam", "medqa_us", "medqa_mcmle", "clinical_knowledge", "meds_bench_mcqa"]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_model):
    tmp_path = tmp_path_factory.mktemp("benchmarks")
    other = tmp_path / "other" / "model"
    shutil.copytree(tiny_model, other)
    log = tmp_path / "graded.log"
    stage = {"id": "eval", "kind": "evaluate", "inputs": {"models": [str(tiny_model), str(other)], "data": DATA},
             "args": {"max_new_tokens": 6, "few_shot": 1, "breakdown_by": ["exam_class"],
                      "few_shot_from": {"clinical_knowledge": str(CMMLU_DEV),
                                        "cmb_exam": str(FIXTURES / "cmb_exam_val.json")}},
             "reward": {"_component_": "tests.stages.test_evaluate_benchmarks.StandInRubrics", "met": MET,
                        "log": str(log)}}
    assert run_recipe(tmp_path, [stage]) == 0
    return tmp_path / "run" / "eval", tiny_model.parent.name, log


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_every_benchmark_set_is_read_in_its_layout_and_scored(evaluated):
    stage_dir, name, log = evaluated
    results = json.loads((stage_dir / "results.json").read_text(encoding="utf-8"))
    sets = results["eval_sets"]
    assert {s: (v["kind"], v["format"], v["rows"]) for s, v in sets.items()} == {
        "cmb_exam": ("choice", "cmb_exam", 3),  # few-shot from the val file: every test row scored
        "cmexam": ("choice", "cmexam", 2), "medqa_us": ("choice", "medqa", 1), "medqa_mcmle": ("choice", "medqa", 1),
        "clinical_knowledge": ("choice", "cmmlu", 3), "meds_bench_mcqa": ("choice", "meds_bench", 2),
        "healthbench": ("generation", "healthbench", 3), "cmb_clin": ("generation", "cmb_clin", 3)}
    assert sets["cmb_exam"]["multiple_answer_rows"] == 1 and sets["cmexam"]["multiple_answer_rows"] == 1
    rows = {s: [r for r in _rows(stage_dir / "generations" / f"{name}.jsonl") if r["set"] == s] for s in sets}
    multi = rows["cmb_exam"][1]
    assert (multi["answer_key"], multi["multiple"], multi["tags"]) == ("ACD", True, {"exam_class": "执业医师"})
    shot, asked = multi["prompt"][0]["content"], multi["prompt"][2]["content"]
    assert shot.startswith("以下是中国医师考试中执业医师考试的一道单项选择题") and "儿童手足口病" in shot
    assert multi["prompt"][1] == {"role": "assistant", "content": "答案是A。"}
    assert asked.startswith("以下是中国医师考试中执业医师考试的一道多项选择题，不需要做任何分析和解释，直接输出答案选项。")
    cmmlu = rows["clinical_knowledge"][0]["prompt"][0]["content"]
    assert cmmlu.startswith("以下是关于临床知识的单项选择题，请直接给出正确答案的选项。\n\n题目：儿童正常呼吸频率随年龄增长而\n")
    assert "答案是：B\n\n题目：小儿体温超过多少摄氏度称为高热？" in cmmlu and cmmlu.endswith("答案是：")
    assert rows["meds_bench_mcqa"][0]["prompt"][0]["content"].startswith("Case1: Input: Question: Which sign")
    medqa = rows["medqa_us"][0]["prompt"][0]["content"]
    assert "D. Otitis media\nAnswer: B\n\nQuestion: A 6-month-old" in medqa and medqa.endswith("D. HPV\nAnswer:")
    clin = rows["cmb_clin"]
    assert [len(r["prompt"]) for r in clin] == [1, 3, 1] and clin[1]["prompt"][1]["content"] == "手足口病。"
    for model in results["models"]:
        for s in CHOICE_SETS:
            m = results["metrics"][model]
            assert m[f"{s}/accuracy"] + m[f"{s}/wrong"] + m[f"{s}/unanswerable"] == pytest.approx(100.0)
        assert {"healthbench/reward_mean", "cmb_clin/reward_mean", "healthbench/reward.tag:axis:accuracy"} <= set(
            results["reward"][model])
        assert "healthbench/rouge_l" not in results["metrics"][model]  # no reference: no text metric against ""
    # The source got each row's rubrics and prompt_id (once per model), and no per-criterion metric was made.
    assert sorted(log.read_text(encoding="utf-8").split()) == sorted(
        [f"hb-fixture-000{i}" for i in (1, 2, 3)] * 2)
    assert not any(k.startswith("healthbench/reward.criterion") for k in results["reward"][name])
    assert rows["healthbench"][0]["reward_criteria"] == {"criterion:0": 1.0, "criterion:1": 0.0, "criterion:2": 1.0}


def test_healthbench_scores_follow_its_arithmetic_with_bootstrap_deviations(evaluated):
    stage_dir, name, _ = evaluated
    results = json.loads((stage_dir / "results.json").read_text(encoding="utf-8"))
    overall, tags = expected_healthbench()
    hb = results["benchmarks"]["healthbench"]
    assert hb["format"] == "healthbench" and set(hb["models"]) == set(results["models"])
    for scores in hb["models"].values():  # the stand-in ignores the answer: both models score the same
        assert scores["score"] == pytest.approx(overall) and scores["n"] == 3 and scores["unscored"] == 0
        assert scores["resamples"] == 1000 and 0.0 < scores["bootstrap_std"] < 0.5
        assert {t: s["score"] for t, s in scores["tags"].items()} == pytest.approx(tags)
        assert scores["tags"]["theme:emergency_referrals"]["bootstrap_std"] == 0.0  # one example: nothing varies
        assert scores["tags"]["axis:accuracy"]["n"] == 3 and scores["tags"]["axis:accuracy"]["bootstrap_std"] > 0
    assert tags["axis:accuracy"] == pytest.approx((2 / 10 + 1 + 1) / 3)  # the -8 item met: 10 - 8 of 10


def test_report_gives_each_sets_score_interval_and_unanswerable_share(evaluated):
    stage_dir, name, _ = evaluated
    results = json.loads((stage_dir / "results.json").read_text(encoding="utf-8"))
    report = (stage_dir / "report.md").read_text(encoding="utf-8")
    section = report[report.index("## Benchmarks"):report.index("## Metrics")]
    lines = {tuple(c.strip() for c in line.strip("|").split("|")[:3]): line for line in section.splitlines()
             if line.startswith("| ") and not line.startswith("| eval set")}
    for s in CHOICE_SETS + ["cmb_clin"]:
        fmt = results["eval_sets"][s]["format"]
        for model, scores in results["benchmarks"][s]["models"].items():
            label = model + (" (baseline)" if model == results["baseline"] else "")
            cells = [c.strip() for c in lines[(s, fmt, label)].strip("|").split("|")]
            assert cells[4] == str(scores["n"]) and scores["low"] <= scores["value"] <= scores["high"]
            assert cells[6].startswith("[") and cells[6].endswith("]")  # the interval
            if s in CHOICE_SETS:
                assert scores["unanswerable"] == results["metrics"][model][f"{s}/unanswerable"]
                assert cells[9] != "—"  # the unanswerable share
            if model != results["baseline"]:
                assert scores["vs_baseline"] == {k: results["comparisons"][model][f"{s}/{cells[3]}"][k]
                                                 for k in ("diff", "low", "high", "n", "verdict")}
    assert "| HealthBench set | model | n | score | bootstrap std | unscored |" in report
    assert "| theme:emergency_referrals |" in report and "| axis:accuracy |" in report
    assert "| cmb_exam | choice | cmb_exam | 3 |" in report  # the eval sets table names each format
    table = [json.loads(line) for line in (stage_dir / "tables" / "benchmarks.jsonl").open(encoding="utf-8")]
    assert {r["eval_set"] for r in table} == set(CHOICE_SETS) | {"healthbench", "cmb_clin"}


def test_recompute_gives_the_same_scores_and_tells_wrong_from_unanswerable(evaluated, tmp_path):
    stage_dir, name, _ = evaluated
    run_dir = tmp_path / "run"
    shutil.copytree(stage_dir.parent, run_dir)
    before = json.loads((run_dir / "eval" / "results.json").read_text(encoding="utf-8"))
    assert main(["report", str(run_dir), "--recompute"]) == 0
    after = json.loads((run_dir / "eval" / "results.json").read_text(encoding="utf-8"))
    assert after["benchmarks"] == before["benchmarks"]  # the same rows, the same draws

    # The tiny model writes no option letter; answers edited by hand: right (a multiple-answer one among them),
    # wrong, and unanswerable.
    other = next(m for m in after["models"] if m != after["baseline"])
    path = run_dir / "eval" / "generations" / f"{other}.jsonl"
    answers = {("cmb_exam", 0): "答案是B。", ("cmb_exam", 1): "答案：A、C、D", ("cmb_exam", 2): "答案：A",
               ("cmexam", 0): "AC", ("cmexam", 1): "我不确定"}
    rows = _rows(path)
    for row in rows:
        row["answer"] = answers.get((row["set"], row["index"]), row["answer"])
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert main(["report", str(run_dir), "--recompute"]) == 0
    edited = json.loads((run_dir / "eval" / "results.json").read_text(encoding="utf-8"))
    cmb, cmexam = edited["benchmarks"]["cmb_exam"]["models"][other], edited["benchmarks"]["cmexam"]["models"][other]
    assert (cmb["value"], cmb["wrong"], cmb["unanswerable"]) == pytest.approx((200 / 3, 100 / 3, 0.0))
    assert (cmexam["value"], cmexam["wrong"], cmexam["unanswerable"]) == pytest.approx((50.0, 0.0, 50.0))
    assert cmb["low"] <= cmb["value"] <= cmb["high"] and cmb["vs_baseline"]["diff"] == pytest.approx(200 / 3)
    report = (run_dir / "eval" / "report.md").read_text(encoding="utf-8")
    assert f"| cmb_exam | cmb_exam | {other} | accuracy | 3 | 66.67 |" in report
    assert f"| cmexam | cmexam | {other} | accuracy | 2 | 50.00 | [0, 100.00] |" in report


def test_a_format_that_is_no_benchmark_is_refused_before_running(tmp_path, tiny_model, capsys):
    stage = {"id": "eval", "kind": "evaluate",
             "inputs": {"models": [str(tiny_model)], "data": [{"path": str(FIXTURES / "cmexam.csv"), "format": "cmb"}]}}
    assert run_recipe(tmp_path, [stage]) != 0
    err = capsys.readouterr().err
    assert "format: expected one of" in err and "cmb_exam" in err and "got 'cmb'" in err
    assert not (tmp_path / "run" / "eval").exists()


def test_set_names_must_be_unique_and_few_shot_from_must_name_a_set(tmp_path, tiny_model, caplog):
    twin = tmp_path / "copy" / "cmexam.csv"
    twin.parent.mkdir()
    shutil.copy(FIXTURES / "cmexam.csv", twin)
    stage = {"id": "eval", "kind": "evaluate",
             "inputs": {"models": [str(tiny_model)], "data": [str(FIXTURES / "cmexam.csv"), str(twin)]}}
    assert run_recipe(tmp_path, [stage]) != 0
    assert "cmexam names two or more files" in caplog.text
    stage["inputs"]["data"] = [str(FIXTURES / "cmexam.csv")]
    stage["args"] = {"few_shot": 1, "few_shot_from": {"cmexm": str(twin)}}
    assert run_recipe(tmp_path, [stage]) != 0
    assert "few_shot_from names cmexm, which is not an eval set of this stage (cmexam)" in caplog.text
    assert not (tmp_path / "run" / "eval" / "generations").exists()  # refused before generating anything


def test_healthbench_graded_by_the_rubric_judge_over_http(tmp_path):
    """The project's RubricJudge (unclipped per-example scores, as HealthBench averages them) against the local
    judge server, on saved HealthBench rows: the scores are HealthBench's arithmetic on its verdicts, its per-item
    parts stay in the row and its tag parts become the per-tag scores."""
    import re

    from reward.rubric import RubricJudge
    from rlmed.data.records import read_records
    from rlmed.eval.benchmark_scores import healthbench_scores
    from rlmed.eval.benchmarks import healthbench_row
    from rlmed.eval.generations import add_reward_scores, saved_row, set_values
    from tests.reward.server import JudgeServer

    def grader(body: dict) -> str:  # met when the criterion holds one of MET, whatever the answer
        criterion = re.search(r'kind="criterion"[^>]*>\n(.*?)\n</', body["messages"][1]["content"], re.S).group(1)
        return json.dumps({"explanation": "按标准", "criteria_met": any(w in criterion for w in MET)})

    rows = []
    for i, record in enumerate(read_records(FIXTURES / "healthbench.jsonl")):
        c = healthbench_row(record)
        rows.append(saved_row("healthbench", i, "generation", c.messages, "请尽快就医。", tags=c.tags,
                              metadata=c.metadata))
    with JudgeServer() as server:
        server.script(then=grader)
        judge = RubricJudge(model="judge-test", base_url=server.base_url, api_key_env=None, clip=False,
                            cache_dir=str(tmp_path / "cache"), timeout_s=10.0, max_retries=1)
        judge.client.progress = False
        scored = add_reward_scores(judge, rows)
        assert server.count == 9  # one request per rubric item (HealthBench's per-criterion grading)
    assert scored[0]["reward_criteria"] == {"item:1": 1.0, "item:2": 0.0, "item:3": 1.0}
    found = healthbench_scores(set_values("generation", scored), seed=1, set_name="healthbench")
    overall, tags = expected_healthbench()
    assert found["score"] == pytest.approx(overall) and found["unscored"] == 0
    assert {t: s["score"] for t, s in found["tags"].items()} == pytest.approx(tags)
