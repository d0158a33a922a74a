"""Text metrics (methods.md §7) against values worked out by hand on small jieba-tokenised Chinese examples."""

from __future__ import annotations

import math

import jieba
import pytest

from rlmed.eval.text_metrics import (METRIC_KEYS, bleu, distinct, gleu, rouge_l, rouge_n, text_metrics,
                                     tokenize)

# The hand computations below rest on these segmentations; if a jieba release segments differently, these
# asserts fail first and say why the numbers moved.
REF = "孩子发烧了怎么办"
HYP = "孩子发烧怎么办"
REF_TOKENS = ["孩子", "发烧", "了", "怎么办"]
HYP_TOKENS = ["孩子", "发烧", "怎么办"]
SWAP_REF, SWAP_HYP = "多喝水，注意休息", "注意休息，多喝水"


def test_tokenize_is_jieba_precise_mode_with_whitespace_dropped():
    assert tokenize(REF) == REF_TOKENS
    assert tokenize(HYP) == HYP_TOKENS
    assert tokenize(SWAP_REF) == ["多喝水", "，", "注意", "休息"]  # punctuation is a token, kept
    assert tokenize(SWAP_HYP) == ["注意", "休息", "，", "多喝水"]
    # jieba itself returns the spaces as tokens; tokenize drops them.
    assert " " in jieba.lcut("注意 休息 ")
    assert tokenize("注意 休息 ") == ["注意", "休息"]
    assert tokenize("") == [] and tokenize(" \n\t") == []


def test_bleu_by_hand_with_method3_smoothing_and_brevity_penalty():
    # hyp 孩子 发烧 怎么办 (3 tokens) vs ref 孩子 发烧 了 怎么办 (4 tokens)
    # p1 = 3/3; p2: hyp bigrams 孩子发烧 ✓, 发烧怎么办 ✗ (ref has 发烧了, 了怎么办) → 1/2
    # p3: the one hyp trigram is not in ref → 0/1, method 3 makes it 1/(2^1·1) = 1/2
    # p4: the hyp has no 4-gram → nltk counts 0/1 → 1/(2^2·1) = 1/4
    # BP = exp(1 - 4/3) = exp(-1/3) since the hyp is shorter
    bp = math.exp(-1 / 3)
    assert bleu(REF_TOKENS, HYP_TOKENS, 1) == pytest.approx(100 * bp * 1.0)
    assert bleu(REF_TOKENS, HYP_TOKENS, 2) == pytest.approx(100 * bp * (1 * 0.5) ** (1 / 2))
    assert bleu(REF_TOKENS, HYP_TOKENS, 3) == pytest.approx(100 * bp * (1 * 0.5 * 0.5) ** (1 / 3))
    assert bleu(REF_TOKENS, HYP_TOKENS, 4) == pytest.approx(100 * bp * (1 * 0.5 * 0.5 * 0.25) ** (1 / 4))
    assert bleu(REF_TOKENS, HYP_TOKENS, 4) == pytest.approx(100 * bp * 0.5)  # (1/16)^(1/4) = 1/2


def test_bleu_word_order_only_hurts_higher_orders():
    ref, hyp = tokenize(SWAP_REF), tokenize(SWAP_HYP)
    # p1 = 4/4; p2: hyp bigrams 注意休息 ✓, 休息， ✗, ，多喝水 ✗ → 1/3; equal lengths → BP = 1
    assert bleu(ref, hyp, 1) == pytest.approx(100.0)
    assert bleu(ref, hyp, 2) == pytest.approx(100 * math.sqrt(1 / 3))


def test_gleu_is_matches_over_the_larger_ngram_count():
    # 1..4-grams: hyp 3 + 2 + 1 = 6, ref 4 + 3 + 2 + 1 = 10; matches 3 unigrams + 1 bigram = 4
    # GLEU = min(4/6, 4/10) = 4/10
    assert gleu(REF_TOKENS, HYP_TOKENS) == pytest.approx(40.0)


def test_rouge_n_f1_by_hand():
    # ROUGE-1: overlap 3, P = 3/3, R = 3/4 → F = 2·1·0.75 / 1.75 = 6/7
    assert rouge_n(REF_TOKENS, HYP_TOKENS, 1) == pytest.approx(600 / 7)
    # ROUGE-2: overlap 1 (孩子发烧), P = 1/2, R = 1/3 → F = 2·(1/6) / (5/6) = 2/5
    assert rouge_n(REF_TOKENS, HYP_TOKENS, 2) == pytest.approx(40.0)


def test_rouge_n_clips_repeated_ngrams():
    # hyp 发烧 发烧 发烧 vs ref 发烧 了: 发烧 matches once only → P = 1/3, R = 1/2 → F = 2·(1/6)/(5/6) = 2/5
    assert rouge_n(["发烧", "了"], ["发烧", "发烧", "发烧"], 1) == pytest.approx(40.0)


def test_rouge_l_uses_the_longest_common_subsequence_not_bag_overlap():
    ref, hyp = tokenize(SWAP_REF), tokenize(SWAP_HYP)
    # Same four tokens in another order: ROUGE-1 is 100, but the LCS is 注意 休息 (2): P = R = 2/4 → F = 1/2
    assert rouge_n(ref, hyp, 1) == pytest.approx(100.0)
    assert rouge_l(ref, hyp) == pytest.approx(50.0)
    # ROUGE-2 here: only 注意休息 of 3 bigrams on each side → P = R = 1/3
    assert rouge_n(ref, hyp, 2) == pytest.approx(100 / 3)
    # On the first pair the LCS is 孩子 发烧 怎么办 = 3 → same as ROUGE-1: 6/7
    assert rouge_l(REF_TOKENS, HYP_TOKENS) == pytest.approx(600 / 7)


def test_distinct_is_corpus_level_and_does_not_cross_hypotheses():
    hyps = [tokenize("孩子发烧怎么办"), tokenize("孩子咳嗽怎么办")]
    assert hyps == [["孩子", "发烧", "怎么办"], ["孩子", "咳嗽", "怎么办"]]
    # unigrams: 6 in all, unique 孩子 发烧 怎么办 咳嗽 = 4 → 4/6 (each hypothesis alone would be 3/3)
    assert distinct(hyps, 1) == pytest.approx(400 / 6)
    # bigrams: 孩子发烧, 发烧怎么办, 孩子咳嗽, 咳嗽怎么办 = 4 of 4; a crossing 怎么办|孩子 would make 5
    assert distinct(hyps, 2) == pytest.approx(100.0)
    # two one-token hypotheses: no bigram inside either → 0 (crossing would give 发烧发烧 1/1 = 100)
    assert distinct([["发烧"], ["发烧"]], 2) == 0.0
    assert distinct([["发烧"], ["发烧"]], 1) == pytest.approx(50.0)


def test_identical_strings_score_100_when_long_enough():
    toks = REF_TOKENS  # 4 tokens: every order 1..4 has n-grams
    for n in range(1, 5):
        assert bleu(toks, toks, n) == pytest.approx(100.0)
    assert gleu(toks, toks) == pytest.approx(100.0)
    assert rouge_n(toks, toks, 1) == rouge_n(toks, toks, 2) == rouge_l(toks, toks) == pytest.approx(100.0)
    scores = text_metrics([REF], [REF])
    for key in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "gleu", "rouge_1", "rouge_2", "rouge_l"):
        assert scores[key] == pytest.approx(100.0), key


def test_identical_strings_shorter_than_the_order():
    two = tokenize("发烧了")
    assert two == ["发烧", "了"]
    # BLEU-3: p1 = p2 = 1, p3 = 0/1 → 1/2 → (1·1·½)^(1/3); BLEU-4: p4 → 1/4 → (1·1·½·¼)^(1/4) ≈ 59.46
    assert bleu(two, two, 2) == pytest.approx(100.0)
    assert bleu(two, two, 3) == pytest.approx(100 * 0.5 ** (1 / 3))
    assert bleu(two, two, 4) == pytest.approx(100 * (1 / 8) ** (1 / 4))
    assert gleu(two, two) == pytest.approx(100.0)  # pools 2 unigrams + 1 bigram, all matched
    one = ["发烧"]
    assert rouge_n(one, one, 1) == pytest.approx(100.0)
    assert rouge_n(one, one, 2) == 0.0  # no bigram to match
    assert bleu(one, one, 2) == pytest.approx(100 * math.sqrt(0.5))  # p2 = 0/1 → 1/2


def test_empty_hypothesis_or_reference_scores_zero_without_raising():
    for ref, hyp in ((REF_TOKENS, []), ([], HYP_TOKENS), ([], [])):
        for n in range(1, 5):
            assert bleu(ref, hyp, n) == 0.0
        assert gleu(ref, hyp) == 0.0
        assert rouge_n(ref, hyp, 1) == rouge_n(ref, hyp, 2) == rouge_l(ref, hyp) == 0.0
    assert distinct([], 1) == 0.0 and distinct([[]], 2) == 0.0
    scores = text_metrics(["孩子发烧了怎么办", ""], ["", "   "])
    assert scores == {key: 0.0 for key in METRIC_KEYS}


def test_text_metrics_keys_and_per_sample_average():
    scores = text_metrics([REF, SWAP_REF], [HYP, SWAP_HYP])
    assert tuple(scores) == ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "gleu", "rouge_1", "rouge_2", "rouge_l",
                             "distinct_1", "distinct_2")
    bp = math.exp(-1 / 3)
    # sample 1 by hand above; sample 2: BLEU-1 = 100, BLEU-2 = 100·√(1/3)
    assert scores["bleu_1"] == pytest.approx((100 * bp + 100) / 2)
    assert scores["bleu_2"] == pytest.approx((100 * bp * math.sqrt(0.5) + 100 * math.sqrt(1 / 3)) / 2)
    # ROUGE-1: (6/7 + 1)/2; ROUGE-2: (2/5 + 1/3)/2; ROUGE-L: (6/7 + 1/2)/2
    assert scores["rouge_1"] == pytest.approx((600 / 7 + 100) / 2)
    assert scores["rouge_2"] == pytest.approx((40 + 100 / 3) / 2)
    assert scores["rouge_l"] == pytest.approx((600 / 7 + 50) / 2)
    # sample 2 GLEU: 1..4-grams 4 + 3 + 2 + 1 = 10 per side; matches 4 unigrams + 注意休息 + nothing longer = 5
    assert scores["gleu"] == pytest.approx((40 + 50) / 2)
    # Distinct over both hypotheses: unigrams 孩子 发烧 怎么办 | 注意 休息 ， 多喝水 → 7 unique of 7;
    # bigrams 2 + 3 = 5, all different → 100
    assert scores["distinct_1"] == pytest.approx(100.0)
    assert scores["distinct_2"] == pytest.approx(100.0)


def test_text_metrics_rejects_mismatched_or_empty_inputs():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        text_metrics([REF, REF], [HYP])
    with pytest.raises(ValueError, match="no samples"):
        text_metrics([], [])
    with pytest.raises(ValueError):
        bleu(REF_TOKENS, HYP_TOKENS, 0)
