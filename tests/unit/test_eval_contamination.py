"""Eval contamination: normalisation, exact and near matches through the n-gram index, short texts, best match."""

from __future__ import annotations

import random

import pytest

from rlmed.eval.contamination import find_contamination, normalize, summarize

LONG = ("宝宝三岁，最近一周反复咳嗽，晚上和早晨比较厉害，有白色的痰，不发烧，精神和食欲都还可以，"
        "之前吃过两天止咳糖浆没有明显好转，请问需要去医院拍胸片吗？平时在家应该怎么护理比较好？")


def train(*texts: str) -> list[tuple[str, str]]:
    return [(f"train.jsonl:{i + 1}", t) for i, t in enumerate(texts)]


def mutate(text: str, positions: list[int], new: str = "甲") -> str:
    chars = list(text)
    for p in positions:
        chars[p] = new
    return "".join(chars)


def test_normalize_unifies_width_case_punctuation_and_whitespace():
    assert normalize("  孩子 发烧，\n怎么办？ ") == normalize("孩子发烧怎么办") == "孩子发烧怎么办"
    assert normalize("ＡＢＣ　１２３！Take  2   Tablets.") == "abc 123 take 2 tablets"
    assert normalize("发烧 take 2 片") == "发烧take 2片"  # spaces survive only between latin words/digits
    assert normalize("体温38℃") != normalize("体温38%")  # symbols carry meaning and are kept
    assert normalize("。，！？ ") == ""


def test_exact_duplicates_differing_in_whitespace_punctuation_and_width_are_exact():
    evals = ["孩子发烧38度怎么办？", "Does my child need AMOXICILLIN?", LONG]
    variants = train(
        "无关的训练文本，讲的是成人高血压的饮食管理。",
        " 孩子 发烧３８度，怎么办 ",               # full-width digits, spaces, different punctuation
        "does my child need amoxicillin",       # case and punctuation
        LONG.replace("，", ",").replace("？", "?\n"),
    )
    matches = find_contamination(evals, variants)
    assert [(m.eval_index, m.source, m.kind, m.similarity) for m in matches] == [
        (0, "train.jsonl:2", "exact", 1.0), (1, "train.jsonl:3", "exact", 1.0), (2, "train.jsonl:4", "exact", 1.0)]


def test_a_near_copy_with_two_characters_changed_is_near_above_threshold():
    copy = mutate(LONG, [10, 40])
    (match,) = find_contamination([LONG], train("无关文本：成人高血压饮食。", copy))
    assert match.kind == "near" and match.source == "train.jsonl:2"
    assert 0.8 <= match.similarity < 1.0
    # Jaccard counts the changed n-grams on both sides, so the same copy scores lower (below 0.8 here).
    jaccard = find_contamination([LONG], train(copy), threshold=0.7, measure="jaccard")[0].similarity
    assert 0.7 <= jaccard < match.similarity
    # A loose copy (every sixth character changed) falls below the threshold.
    assert find_contamination([LONG], train(mutate(LONG, list(range(0, len(LONG), 6))))) == []


def test_an_eval_row_inside_a_longer_training_dialogue_is_found_by_containment():
    dialogue = "患者：" + LONG + "\n医生：建议先观察，多喝水，如咳嗽加重或出现发热、气促请及时就诊，必要时拍胸片。"
    (match,) = find_contamination([LONG], train(dialogue))
    assert match.kind == "near" and match.similarity == 1.0
    assert find_contamination([LONG], train(dialogue), measure="jaccard") == []  # why containment is the default


def test_an_unrelated_text_is_not_reported():
    evals = ["新生儿黄疸值多少需要照蓝光治疗？出生第五天，经皮测了十五点几，吃奶正常。", LONG]
    unrelated = train("成人高血压患者应低盐饮食，每天食盐不超过五克，并规律服药、定期监测血压。",
                      "糖尿病患者运动前后要监测血糖，避免空腹剧烈运动，随身携带糖果以防低血糖。")
    assert find_contamination(evals, unrelated) == []
    assert summarize([], n_eval=2) == {"n_eval": 2, "contaminated": 0, "exact": 0, "near": 0, "rate": 0.0}


def test_short_texts_match_exactly_only():
    short = "发烧怎么办"  # shorter than 2 x ngram: too short to call a shared phrase a copy
    matches = find_contamination([short, "！！"], train("宝宝发烧怎么办呀，急", "发烧，怎么办？", "！！"))
    assert [(m.eval_index, m.kind, m.source, m.count) for m in matches] == [(0, "exact", "train.jsonl:2", 1)]
    # Lowering the minimum lets the same short text near-match the longer training row that contains it.
    near = find_contamination([short], train("宝宝发烧怎么办呀，急"), min_near_chars=5)
    assert [(m.kind, m.similarity) for m in near] == [("near", 1.0)]
    # A training row shorter than n has no n-grams and cannot near-match anything.
    assert find_contamination([LONG], train(LONG[:4])) == []


def test_the_best_of_several_matching_training_rows_is_reported():
    evals = [LONG]
    candidates = train(mutate(LONG, [5, 30]), mutate(LONG, [12]), LONG + "。", mutate(LONG, [12]))
    (match,) = find_contamination(evals, candidates)
    assert (match.source, match.kind, match.count) == ("train.jsonl:3", "exact", 4)  # exact beats near
    (match,) = find_contamination(evals, candidates[:2] + candidates[3:])
    assert match.source == "train.jsonl:2" and match.kind == "near"  # the closer copy; the first of equals
    assert match.similarity > find_contamination(evals, candidates[:1])[0].similarity


@pytest.mark.parametrize("measure", ["containment", "jaccard"])
def test_index_finds_the_same_matches_as_a_brute_force_check(measure):
    # Prefix filtering must not lose matches: compare with a direct (eval x train) containment check.
    rng = random.Random(0)
    alphabet = "孩子发烧咳嗽腹泻呕吐皮疹黄疸过敏湿疹便秘哭闹睡眠喂养疫苗"
    base = ["".join(rng.choice(alphabet) for _ in range(40)) for _ in range(30)]
    rows = []
    for j in range(200):
        src = base[j % 30]
        k = rng.randrange(0, 6)
        rows.append((f"t:{j}", mutate(src, rng.sample(range(40), k), "乙") if k else "无关" * 20))
    got = {m.eval_index: round(m.similarity, 9)
           for m in find_contamination(base, rows, threshold=0.8, measure=measure)}

    def grams(t):
        return {t[i:i + 5] for i in range(len(t) - 4)}

    def similarity(e, t):
        shared = len(grams(e) & grams(t))
        return shared / (len(grams(e)) if measure == "containment" else len(grams(e) | grams(t)))

    want = {}
    for i, e in enumerate(base):
        sims = [similarity(e, t) for _, t in rows if normalize(t) != e]
        exact = any(normalize(t) == e for _, t in rows)
        best = 1.0 if exact else max(sims, default=0.0)
        if best >= 0.8:
            want[i] = round(best, 9)
    assert got == want and len(want) >= 3


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError, match="threshold"):
        find_contamination(["a"], [], threshold=0)
    with pytest.raises(ValueError, match="measure"):
        find_contamination(["a"], [], measure="cosine")
