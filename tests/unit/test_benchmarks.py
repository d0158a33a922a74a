"""Benchmark readers (tests/fixtures/benchmarks: each benchmark's field layout, invented content), their prompt
layouts, multiple-answer extraction, the wrong / unanswerable shares, and HealthBench's clipped score with its
bootstrap standard deviation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rlmed.data.records import DataError, Record, read_records
from rlmed.data.sources import DataSource
from rlmed.eval.benchmark_scores import clipped_stats, healthbench_scores
from rlmed.eval.benchmarks import (ChoiceItem, choice_item, choice_messages, cmb_clin_rows, detect_benchmark,
                                   healthbench_row, meds_options, read_benchmark_file)
from rlmed.eval.bootstrap import rng_for
from rlmed.eval.choice import choice_rows, extract_choice, extract_choices, gold_letters
from rlmed.eval.generations import SetValues, saved_row, set_values
from rlmed.stages.evaluate import Args, load_eval_set

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "benchmarks"
CMMLU = FIXTURES / "cmmlu" / "test" / "clinical_knowledge.csv"
MEDS = FIXTURES / "meds_bench_mcqa.json"


def records(name: str) -> list[Record]:
    path = FIXTURES / name
    found = read_benchmark_file(str(path))
    return found[0] if found is not None else read_records(path)


# --- readers --------------------------------------------------------------------------------------------------------
def test_cmb_exam_rows_convert_with_their_exam_fields_and_multiple_answers():
    single, multi, nurse = (choice_item(r, "cmb_exam") for r in records("cmb_exam.json"))
    assert single == ChoiceItem("幼儿，2岁。发热1天，体温39.2℃，精神好，无其他不适。首选的退热处理是",
                                ["静脉补液", "口服对乙酰氨基酚", "肌注地塞米松", "酒精擦浴"], "B", False,
                                {"exam_type": "医师考试", "exam_class": "执业医师", "exam_subject": "临床执业医师",
                                 "question_type": "单项选择题"})  # the empty option E is CMB's padding, dropped
    assert (multi.answer, multi.multiple, len(multi.options)) == ("ACD", True, 5)
    assert multi.fields["question_type"] == "多项选择题" and nurse.fields["exam_type"] == "护理考试"


def test_cmexam_reads_its_option_text_and_annotations():
    first, multi, _ = (choice_item(r, "cmexam") for r in records("cmexam.csv"))
    assert first.options == ["6个月至5岁", "新生儿期", "6至10岁", "青春期", "成年期"] and first.answer == "A"
    assert first.fields == {"Disease Group": "神经系统疾病", "Clinical Department": "儿科",
                            "Medical Discipline": "临床医学", "Competency": "医学知识", "Difficulty level": "1"}
    assert (multi.answer, multi.multiple, multi.options[2]) == ("AC", True, "多为小细胞低色素性")


def test_medqa_reads_usmle_and_mcmle_rows_and_bigbio_options():
    us = choice_item(records("medqa_us.jsonl")[0], "medqa")
    assert (us.options, us.answer, us.fields) == (["Asthma", "Croup", "Pneumonia", "Otitis media"], "B",
                                                   {"language": "en", "meta_info": "step2&3"})
    zh = choice_item(records("medqa_mcmle.jsonl")[1], "medqa")
    assert (len(zh.options), zh.answer, zh.fields["language"]) == (5, "D", "zh")
    bigbio = Record("x.jsonl", 1, {"question": "Q?", "answer_idx": "A", "answer": "yes",
                                   "options": [{"key": "A", "value": "yes"}, {"key": "B", "value": "no"}]})
    assert choice_item(bigbio, "medqa").options == ["yes", "no"]
    by_text = Record("x.jsonl", 2, {"question": "Q?", "answer": "no", "options": {"A": "yes", "B": "no"}})
    assert choice_item(by_text, "medqa").answer == "B"  # answer_idx absent: the answer text names the option


def test_cmmlu_csv_drops_pandas_index_and_names_the_subject_in_chinese():
    rows, fmt = read_benchmark_file(str(CMMLU))
    assert fmt == "cmmlu" and rows[0].row == {"Question": "小儿体温超过多少摄氏度称为高热？", "A": "37.5", "B": "38",
                                              "C": "39", "D": "41", "Answer": "C"}
    assert rows[0].line == 2 and rows[0].path == str(CMMLU)
    item = choice_item(rows[0], "cmmlu")
    assert (item.options, item.answer, item.fields) == (["37.5", "38", "39", "41"], "C",
                                                        {"subject": "clinical_knowledge", "subject_zh": "临床知识"})


def test_meds_bench_task_file_gives_one_row_per_instance_with_options_from_the_input():
    rows, fmt = read_benchmark_file(str(MEDS))
    assert fmt == "meds_bench" and len(rows) == 3
    item = choice_item(rows[1], "meds_bench")
    assert item.options == ["1 month", "3 months", "6 to 8 months", "18 months"] and item.answer == "C"
    assert item.fields["instruction"].startswith("Answer the multiple-choice question")
    assert item.fields["output"] == "The right answer is C: 6 to 8 months"
    assert meds_options("Q?\nA. one\nB. two\nC. three\nPick one.") == ["one", "two", "three"]
    assert meds_options("no options here") is None
    flat = Record("t.jsonl", 1, {"instruction": "Pick.", "input": "Which? one, two or three", "output": "B"})
    assert choice_item(flat, "meds_bench").options == ["", "", "", ""]  # unreadable layout: letters alone


def test_healthbench_rows_carry_rubrics_prompt_id_and_example_tags():
    first, second, _ = (healthbench_row(r) for r in records("healthbench.jsonl"))
    assert first.messages == [{"role": "user", "content": first.messages[0]["content"]}] and first.reference is None
    assert first.metadata["prompt_id"] == "hb-fixture-0001" and [r["points"] for r in first.metadata["rubrics"]] == \
        [10, 5, -8]
    assert first.tags == {"example_tags": ["theme:emergency_referrals", "physician_agreed_category:emergent"]}
    assert [m["role"] for m in second.messages] == ["system", "user", "assistant", "user"]


def test_cmb_clin_case_becomes_one_row_per_question_with_the_earlier_solutions():
    first, second = cmb_clin_rows(records("cmb_clin.json")[0])
    assert first.messages[0]["content"].startswith("以下是一位患儿的病历：") and first.reference == "手足口病。"
    assert first.messages[0]["content"].endswith("\n根据上述病史，最可能的诊断是什么？")
    assert [m["role"] for m in second.messages] == ["user", "assistant", "user"]
    assert second.messages[1]["content"] == "手足口病。" and second.reference.startswith("精神差")


@pytest.mark.parametrize("name, expected", [
    ("cmb_exam.json", "cmb_exam"), ("cmexam.csv", "cmexam"), ("medqa_us.jsonl", "medqa"),
    ("medqa_mcmle.jsonl", "medqa"), ("healthbench.jsonl", "healthbench"), ("cmb_clin.json", "cmb_clin")])
def test_layouts_are_detected_from_the_columns(name, expected):
    assert detect_benchmark(records(name)[0].row) == expected


def test_rows_of_rlmeds_own_shapes_are_no_benchmark():
    assert detect_benchmark({"question": "Q", "options": ["a", "b"], "answer": "A"}) is None
    assert detect_benchmark({"instruction": "I", "input": "x", "output": "y"}) is None  # Alpaca unless told
    assert read_benchmark_file(str(FIXTURES / "cmexam.csv")) is None  # a named first column: the general reader


@pytest.mark.parametrize("fmt, row, message", [
    ("cmb_exam", {"question": "Q", "option": {"A": "x", "B": "y"}, "question_type": "单项选择题"},
     "no answer: the question cannot be scored"),
    ("cmb_exam", {"question": "Q", "option": {"A": "x", "C": "y"}, "answer": "A"}, "lettered A, B, ... in order"),
    ("cmexam", {"Question": "Q", "Options": "A x\nB y", "Answer": "E"}, "not a set of distinct option letters"),
    ("cmexam", {"Question": "Q", "Options": "x\ny", "Answer": "A"}, "cannot read the line 'x'"),
    ("medqa", {"question": "Q", "options": "A x", "answer_idx": "A"}, "'options' should be an object"),
    ("meds_bench", {"instruction": "I", "input": "Q", "output": "Diabetes"}, "does not start with an option letter"),
])
def test_bad_rows_name_their_file_and_line(fmt, row, message):
    with pytest.raises(DataError, match=rf"^b\.json:7: .*{message}"):
        choice_item(Record("b.json", 7, row), fmt)


def test_several_gold_letters_make_a_multiple_answer_question_whatever_its_type():
    row = {"question": "Q", "option": {"A": "x", "B": "y", "C": "z"}, "answer": "CA", "question_type": "单项选择题"}
    assert choice_item(Record("b.json", 1, row), "cmb_exam").answer == "AC"
    assert choice_item(Record("b.json", 1, row), "cmb_exam").multiple


def test_healthbench_without_positive_points_is_refused():
    row = json.loads((FIXTURES / "healthbench.jsonl").read_text(encoding="utf-8").splitlines()[0])
    row["rubrics"] = [{"criterion": "Does harm.", "points": -5, "tags": []}]
    with pytest.raises(DataError, match="h.jsonl:3: no rubric item has positive points"):
        healthbench_row(Record("h.jsonl", 3, row))


# --- prompts --------------------------------------------------------------------------------------------------------
def test_cmb_prompt_is_cmbs_query_and_its_shots_earlier_turns():
    single, multi, _ = (choice_item(r, "cmb_exam") for r in records("cmb_exam.json"))
    messages = choice_messages("cmb_exam", multi, [single])
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == "答案是B。"
    assert messages[2]["content"] == (
        "以下是中国医师考试中执业医师考试的一道多项选择题，不需要做任何分析和解释，直接输出答案选项。\n"
        "婴儿腹泻时提示中度以上脱水的表现有\nA. 尿量明显减少\nB. 精神稍差但可逗笑\nC. 前囟明显凹陷\nD. 皮肤弹性差\nE. 哭时泪多")


def test_cmmlu_cmexam_medqa_and_meds_layouts():
    cmmlu = [choice_item(r, "cmmlu") for r in read_benchmark_file(str(CMMLU))[0]]
    assert choice_messages("cmmlu", cmmlu[1], cmmlu[:1])[0]["content"] == (
        "以下是关于临床知识的单项选择题，请直接给出正确答案的选项。\n\n"
        "题目：小儿体温超过多少摄氏度称为高热？\nA. 37.5\nB. 38\nC. 39\nD. 41\n答案是：C\n\n"
        "题目：新生儿生理性黄疸一般在出生后几天出现？\nA. 第1天内\nB. 第2至3天\nC. 第10天\nD. 第15天\n答案是：")
    cmexam = [choice_item(r, "cmexam") for r in records("cmexam.csv")]
    assert choice_messages("cmexam", cmexam[1])[0]["content"] == (
        "以下是中国医师资格考试的多项选择题，请选出其中所有正确答案。\n\n问题: 关于儿童缺铁性贫血，正确的有\n选项:\n"
        "A 可口服铁剂治疗\nB 血清铁蛋白升高\nC 多为小细胞低色素性\nD 一律需要输血\n答案: ")
    us = [choice_item(r, "medqa") for r in records("medqa_us.jsonl")]
    text = choice_messages("medqa", us[1], us[:1])[0]["content"]
    assert text.startswith("The following are multiple choice questions (with answers) about medicine.\n\nQuestion: ")
    assert "D. Otitis media\nAnswer: B\n\nQuestion: A 6-month-old" in text and text.endswith("D. HPV\nAnswer:")
    zh = choice_item(records("medqa_mcmle.jsonl")[0], "medqa")
    assert choice_messages("medqa", zh)[0]["content"].endswith("E. 高渗性脱水\n答案：")
    meds = [choice_item(r, "meds_bench") for r in read_benchmark_file(str(MEDS))[0]]
    zero = choice_messages("meds_bench", meds[0])[0]["content"]
    assert zero == meds[0].fields["instruction"] + "\n" + meds[0].fields["input"]
    few = choice_messages("meds_bench", meds[2], meds[:1])[0]["content"]
    assert few.startswith("Case1: Input: Question: Which sign") and ", Output: The right answer is B: " in few
    assert "Please learn from the few-shot cases to see what content you have to output. Input: Question: Which drug" \
        in few


def test_load_eval_set_takes_few_shot_from_a_dev_file(tmp_path):
    args = Args(few_shot=1, few_shot_from={"clinical_knowledge": str(FIXTURES / "cmmlu" / "dev" /
                                                                      "clinical_knowledge.csv")})
    kind, rows, fmt = load_eval_set(DataSource(path=str(CMMLU)), args, "clinical_knowledge")
    assert (kind, fmt, len(rows)) == ("choice", "cmmlu", 3)  # the dev file's example: every test row scored
    assert "题目：儿童正常呼吸频率随年龄增长而" in rows[0].messages[0]["content"]
    kind, rows, _ = load_eval_set(DataSource(path=str(CMMLU)), Args(few_shot=1), "clinical_knowledge")
    assert len(rows) == 2  # the set's own first row became the example
    missing = Args(few_shot=1, few_shot_from={"x": str(tmp_path / "nope.csv")})
    with pytest.raises(ValueError, match="few_shot_from\\['x'\\]: no such file"):
        load_eval_set(DataSource(path=str(CMMLU)), missing, "x")


def test_format_overrides_detection_and_a_row_format_turns_it_off(tmp_path):
    kind, rows, fmt = load_eval_set(DataSource(path=str(FIXTURES / "cmexam.csv"), format="cmexam"), Args(), "c")
    assert (kind, fmt, rows[1].multiple, rows[1].answer) == ("choice", "cmexam", True, "AC")
    alpaca = tmp_path / "meds.jsonl"
    alpaca.write_text(json.dumps({"instruction": "Pick.", "input": "Q? A: x B: y", "output": "B"}) + "\n")
    assert load_eval_set(DataSource(path=str(alpaca)), Args(), "m")[0] == "generation"  # Alpaca: a prompt
    kind, rows, fmt = load_eval_set(DataSource(path=str(alpaca), format="meds_bench"), Args(), "m")
    assert (kind, fmt, rows[0].options, rows[0].answer) == ("choice", "meds_bench", ["x", "y"], "B")


def test_loglik_refuses_multiple_answer_questions():
    with pytest.raises(DataError, match="cmb_exam.json:.*multiple-answer question cannot be scored by log-lik"):
        load_eval_set(DataSource(path=str(FIXTURES / "cmb_exam.json")), Args(choice_scoring="loglik"), "cmb")


def test_a_hub_id_that_cannot_be_reached_says_so():
    with pytest.raises(DataError, match="not a local file, and the Hub dataset could not be loaded"):
        load_eval_set(DataSource(path="FreedomIntelligence/CMB", is_local=False, format="cmb_exam"), Args(), "CMB")


# --- extraction and scoring -----------------------------------------------------------------------------------------
OPTIONS = ["布洛芬", "阿司匹林", "对乙酰氨基酚", "阿司匹林肠溶片", "维生素D"]  # A..E


@pytest.mark.parametrize("output, expected", [
    ("答案：ACD", "ACD"), ("答案是A、C、D。", "ACD"), ("Answer: A, C", "AC"), ("DCA", "ACD"), ("A、C", "AC"),
    ("答案：Ａ，Ｃ", "AC"), ("故选CD", "CD"), ("(A) and (C)", "AC"), ("**A** 和 **E**", "AE"),
    ("答案是B和E，不选A", "BE"), ("AD是正确的", "AD"), ("答案：b", "B"),
    ("布洛芬和对乙酰氨基酚都对", "AC"),  # option texts, when no letter is written
    ("答案：ACF", None),                 # F is no option: an invalid answer, not a partial one
    ("答案：A；答案：C", None),            # two answers that disagree
    ("我不知道", None), ("建议做B超", None), ("", None),
])
def test_multiple_answers_read_as_a_set_of_letters(output, expected):
    assert extract_choices(output, OPTIONS) == expected


def test_single_answer_questions_still_refuse_several_letters():
    assert extract_choice("答案：ACD", OPTIONS) is None and extract_choice("答案：C", OPTIONS) == "C"


def test_gold_letters_normalise_and_check():
    assert gold_letters("D,A、c", OPTIONS) == "ACD"
    for bad in ("AA", "AF", ""):
        with pytest.raises(ValueError, match="not a set of distinct option letters"):
            gold_letters(bad, OPTIONS)


def test_exact_set_match_and_wrong_apart_from_unanswerable():
    outputs = ["答案：ACD", "答案：AC", "答案：B", "我不知道", "答案：C"]
    marks = choice_rows(outputs, [OPTIONS] * 5, ["ACD", "ACD", "B", "A", "A"], [True, True, False, False, False])
    assert marks == [(True, True), (False, True), (True, True), (False, False), (False, True)]
    prompt = [{"role": "user", "content": "问"}]
    rows = [saved_row("m", i, "choice", prompt, out, options=OPTIONS, answer_key=gold, multiple=several)
            for i, (out, gold, several) in enumerate(zip(outputs, ["ACD", "ACD", "B", "A", "A"],
                                                         [True, True, False, False, False]))]
    values = set_values("choice", rows)
    assert {k: list(v) for k, v in values.rows.items()} == {
        "accuracy": [100.0, 0.0, 100.0, 0.0, 0.0], "wrong": [0.0, 100.0, 0.0, 0.0, 100.0],
        "unanswerable": [0.0, 0.0, 0.0, 100.0, 0.0]}
    assert rows[0]["multiple"] is True and "multiple" not in rows[2]


# --- HealthBench statistics -----------------------------------------------------------------------------------------
def test_clipped_stats_clip_the_mean_and_give_the_bootstrap_deviation():
    rng = np.random.default_rng(0)
    assert clipped_stats(np.array([1.5, 1.5]), rng) == {"score": 1.0, "bootstrap_std": 0.0, "n": 2}
    assert clipped_stats(np.array([-0.4, 0.2]), rng)["score"] == 0.0
    # Two examples scored 0 and 1: a resample's mean is 0, 0.5 or 1 with chances 1/4, 1/2, 1/4; std sqrt(1/8).
    found = clipped_stats(np.array([0.0, 1.0]), np.random.default_rng(1), resamples=20000)
    assert found["score"] == 0.5 and found["bootstrap_std"] == pytest.approx(np.sqrt(1 / 8), abs=0.01)
    assert clipped_stats(np.array([]), rng) == {"score": None, "bootstrap_std": None, "n": 0}


def test_healthbench_scores_per_rubric_tag_and_example_tag():
    values = SetValues("generation", [0, 1, 2, 3], {
        "reward_mean": np.array([0.5, -0.2, 1.0, np.nan]),
        "reward.tag:axis:accuracy": np.array([1.0, np.nan, 0.0, np.nan]),
    }, None, [{"example_tags": ["theme:a"]}, {"example_tags": ["theme:a", "theme:b"]}, {},
              {"example_tags": ["theme:b"]}])
    found = healthbench_scores(values, seed=3, set_name="hb")
    assert found["score"] == pytest.approx((0.5 - 0.2 + 1.0) / 3) and found["n"] == 3 and found["unscored"] == 1
    assert {t: (s["score"], s["n"]) for t, s in found["tags"].items()} == {
        "axis:accuracy": (0.5, 2), "theme:a": (pytest.approx(0.15), 2), "theme:b": (0.0, 1)}  # -0.2 clipped
    again = healthbench_scores(values, seed=3, set_name="hb")
    assert again == found  # seeded by (seed, set, tag): a recompute gives the same deviations
    expected = clipped_stats(np.array([0.5, -0.2, 1.0]), rng_for(3, "hb", "healthbench"))
    assert found["bootstrap_std"] == expected["bootstrap_std"] > 0
