"""Multiple-choice evaluation: answer extraction from messy outputs, prompt builders, accuracy."""

from __future__ import annotations

import pytest

from rlmed.eval.choice import accuracy, extract_choice, few_shot_prompt, meds_ins_prompt, zero_shot_prompt

OPTIONS = ["布洛芬", "阿司匹林", "对乙酰氨基酚", "阿司匹林肠溶片"]  # A..D


@pytest.mark.parametrize("output, expected", [
    ("答案：B", "B"),
    ("答案是B。", "B"),
    ("正确答案为 (C)", "C"),
    ("正确答案为（C）", "C"),          # full-width brackets
    ("B. 布洛芬", "B"),               # leading label (the option text is wrong, the letter decides)
    ("选C", "C"),
    ("The answer is D", "D"),
    ("Answer: **(b)**", "B"),         # markdown emphasis and a lower-case letter after a marker
    ("answer:d", "D"),
    ("**A**", "A"),
    ("Ｂ", "B"),                      # full-width letter
    ("b)", "B"),                      # lower-case label
    ("C。", "C"),
    ("答：B", "B"),
    ("最终答案是 D", "D"),
    ("答案：Ｄ．阿司匹林肠溶片", "D"),
    ("C\n解析：A项错误，因为……", "C"),     # leading label wins over letters in the explanation
    ("答案是B。解析：A项阿司匹林不适用于儿童。", "B"),  # marker wins over other letters
])
def test_extracts_the_chosen_letter_from_messy_outputs(output, expected):
    assert extract_choice(output, OPTIONS) == expected


@pytest.mark.parametrize("output, expected", [
    ("选项A错误，选项C正确，故选C", "C"),      # "选项A" discusses an option; "故选C" chooses
    ("I think it is B", "B"),                 # "I" is a word, not option I (and out of range anyway)
    ("A patient with fever should take (c).", "C"),  # leading "A" is the English article
    ("Based on the history, C.", "C"),        # the B of "Based" is not a letter
    ("排除A，选C", "C"),
    ("不是A，是C", "C"),                        # a letter rejected in place does not count
])
def test_letters_inside_words_and_discussion_do_not_count(output, expected):
    assert extract_choice(output, OPTIONS) == expected


def test_answer_quoting_option_text_maps_to_its_letter():
    assert extract_choice("我认为应该用对乙酰氨基酚", OPTIONS) == "C"
    # 阿司匹林 occurs inside 阿司匹林肠溶片: the longer option is the one named
    assert extract_choice("首选阿司匹林肠溶片口服", OPTIONS) == "D"
    assert extract_choice("答案是阿司匹林肠溶片", OPTIONS) == "D"
    assert extract_choice("答案是阿司匹林，而不是布洛芬", OPTIONS) == "B"  # the text right after the marker wins
    assert extract_choice("the answer is IBUPROFEN", ["Ibuprofen", "Aspirin"]) == "A"  # case-insensitive text


@pytest.mark.parametrize("output", [
    "我不知道",
    "",
    "Based on the history, this is hard to say.",
    "答案：E",                       # out of range with 4 options
    "E",
    "E. 以上都不是",
    "答案：AC",                      # several letters for a single-answer question
    "答案是A和C",
    "答案是A，不是答案C",              # conflicting markers
    "选项A错误，选项C正确",            # discusses two options, chooses none
    "布洛芬和对乙酰氨基酚都可以",       # two option texts
    "建议做B超检查",                  # B超 is an examination, not option B
    "维生素C缺乏",                    # vitamin C
    "B12缺乏",                       # a letter next to a digit
    "e.g. aspirin",                  # abbreviation
    "The answer is a bit unclear",   # the article "a" after a marker
    "The answers are listed below",  # "answers": the s is part of the word
    "不选A",
])
def test_returns_none_when_absent_ambiguous_or_invalid(output):
    assert extract_choice(output, OPTIONS) is None


def test_valid_letters_follow_the_option_count():
    five = OPTIONS + ["以上都是"]
    assert extract_choice("答案：E", OPTIONS) is None
    assert extract_choice("答案：E", five) == "E"
    assert extract_choice("答案：C", ["是", "否"]) is None
    # out-of-range standalone letters are ignored, not ambiguous: Z is no option with 4 options
    assert extract_choice("我觉得是 B，Z 不在选项里", OPTIONS) == "B"
    assert extract_choice("我觉得是 B，E 不在选项里", five) is None  # with 5 options E is one: B or E?


def test_short_option_texts_do_not_match_anywhere():
    # "是" occurs in every Chinese sentence; a 1-character option text only counts right after a marker
    assert extract_choice("这是一个问题", ["是", "否"]) is None
    assert extract_choice("答案：否", ["是", "否"]) == "B"


def test_extract_choice_rejects_bad_options():
    with pytest.raises(ValueError):
        extract_choice("A", [])
    with pytest.raises(ValueError):
        extract_choice("A", "ABCD")  # a string is not a list of options


def test_zero_shot_prompt_format():
    prompt = zero_shot_prompt("小儿发热首选哪种退热药？", ["布洛芬", "阿司匹林"])
    assert prompt == "小儿发热首选哪种退热药？\nA. 布洛芬\nB. 阿司匹林\n答案："
    # options that already carry their own label are not labelled twice
    assert zero_shot_prompt("问题", ["A. 布洛芬", "B、阿司匹林"]) == "问题\nA. 布洛芬\nB. 阿司匹林\n答案："


def test_few_shot_prompt_puts_solved_examples_before_the_question():
    examples = [{"question": "Q1", "options": ["x", "y"], "answer": "b"}]
    prompt = few_shot_prompt("Q2", ["u", "v", "w"], examples)
    assert prompt == "Q1\nA. x\nB. y\n答案：B\n\nQ2\nA. u\nB. v\nC. w\n答案："
    assert few_shot_prompt("Q2", ["u", "v"], []) == zero_shot_prompt("Q2", ["u", "v"])
    with pytest.raises(ValueError, match="example 0"):
        few_shot_prompt("Q2", ["u", "v"], [{"question": "Q1", "options": ["x", "y"], "answer": "C"}])


def test_meds_ins_prompt_matches_the_methods_template():
    prompt = meds_ins_prompt("Answer the question.", "发热三天", [
        {"input": "咳嗽", "output": "上呼吸道感染"},
        ("腹泻", "肠胃炎"),
    ])
    assert prompt == ("Case1: Input: 咳嗽, Output: 上呼吸道感染\n"
                      "Case2: Input: 腹泻, Output: 肠胃炎\n"
                      "Answer the question. Please learn from the few-shot cases to see what content you have to "
                      "output. Input: 发热三天")
    with pytest.raises(ValueError, match="at least one"):
        meds_ins_prompt("Answer.", "x", [])


def test_accuracy_counts_unanswered_rows_as_wrong():
    outputs = ["答案：A", "答案：B", "我不知道", "Ｃ"]
    options = [OPTIONS] * 4
    answers = ["A", "C", "B", "Ｃ"]  # gold answers are normalised too
    # extracted A, B, None, C → correct rows 1 and 4: 2/4; answered rows 1, 2, 4: 3/4
    assert accuracy(outputs, options, answers) == {"accuracy": 50.0, "answered": 75.0, "n": 4}


def test_accuracy_rejects_bad_gold_and_shapes():
    with pytest.raises(ValueError, match="row 1"):
        accuracy(["A", "B"], [OPTIONS, OPTIONS], ["A", "E"])
    with pytest.raises(ValueError, match="row 0"):
        accuracy(["A"], [OPTIONS], ["AB"])  # multi-answer gold is out of scope
    with pytest.raises(ValueError):
        accuracy(["A"], [OPTIONS, OPTIONS], ["A"])
    with pytest.raises(ValueError, match="no rows"):
        accuracy([], [], [])
