"""Automatic text metrics on jieba-tokenised Chinese (methods.md §7), each ×100.

BLEU-1..4 (nltk ``sentence_bleu``, smoothing method 3, cumulative uniform weights 1/n over 1..n-grams) and GLEU
(nltk ``sentence_gleu``, 1..4-grams) are per-sample scores averaged over the set; ROUGE-1/2/L are per-sample
F1 scores on tokens, averaged; Distinct-1/2 are corpus level: unique n-grams / all n-grams over ALL hypotheses of
the set, n-grams never crossing from one hypothesis into the next (as the papers report them).

Tokens: ``jieba.lcut`` (precise mode, HMM on), whitespace-only tokens dropped; punctuation tokens are kept, text is
not case-folded or width-normalised, so the scores match what the papers' nltk/jieba scripts give.

Edge cases, one rule for every overlap metric (BLEU, GLEU, ROUGE):
- an empty hypothesis or an empty reference (no tokens after tokenisation) scores 0, without raising — also when
  both are empty: there is nothing to credit, and a model answering nothing must not score 100;
- identical token lists score 100 for ROUGE-n and BLEU-n when they have at least n tokens; GLEU scores 100 for any
  identical non-empty lists (it pools every available 1..4-gram);
- identical lists SHORTER than n: ROUGE-n is 0 (there is no n-gram to match), and BLEU-n is below 100 because nltk
  counts the missing orders as 0 matches out of 1 and method 3 smooths the k-th such order to 1/2^k — e.g. two
  identical tokens give BLEU-4 = (1·1·½·¼)^(1/4) ≈ 59.46. This is nltk's behaviour, kept to match the papers;
- Distinct-n with no n-gram in any hypothesis is 0.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

import jieba
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from nltk.translate.gleu_score import sentence_gleu

from reward.similarity import lcs_length

# jieba logs "Building prefix dict ..." at DEBUG on first use; that noise would land in every evaluation log.
jieba.setLogLevel(logging.WARNING)

METRIC_KEYS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "gleu", "rouge_1", "rouge_2", "rouge_l",
               "distinct_1", "distinct_2")

_SMOOTHING = SmoothingFunction().method3


def tokenize(text: str) -> list[str]:
    """jieba precise-mode tokens of ``text`` with whitespace-only tokens dropped (jieba returns spaces as tokens)."""
    return [tok for tok in jieba.lcut(text) if tok.strip()]


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def bleu(ref_tokens: Sequence[str], hyp_tokens: Sequence[str], n: int) -> float:
    """Cumulative BLEU-n ×100 (weights 1/n for 1..n-grams, nltk smoothing method 3); 0 if either side is empty."""
    if n < 1:
        raise ValueError(f"BLEU order must be >= 1, got {n}")
    if not ref_tokens or not hyp_tokens:
        # nltk already returns 0 here (no unigram match), but it is the documented rule, so do not rely on it.
        return 0.0
    weights = (1.0 / n,) * n
    return 100.0 * float(sentence_bleu([list(ref_tokens)], list(hyp_tokens), weights=weights,
                                       smoothing_function=_SMOOTHING))


def gleu(ref_tokens: Sequence[str], hyp_tokens: Sequence[str]) -> float:
    """Sentence GLEU ×100 over 1..4-grams (nltk): matches / max(hyp n-grams, ref n-grams); 0 if either is empty."""
    if not ref_tokens or not hyp_tokens:
        return 0.0
    return 100.0 * float(sentence_gleu([list(ref_tokens)], list(hyp_tokens), min_len=1, max_len=4))


def _f1(overlap: int, hyp_total: int, ref_total: int) -> float:
    if overlap == 0:  # also covers empty sides: no overlap can exist there
        return 0.0
    precision, recall = overlap / hyp_total, overlap / ref_total
    return 100.0 * 2 * precision * recall / (precision + recall)


def rouge_n(ref_tokens: Sequence[str], hyp_tokens: Sequence[str], n: int) -> float:
    """ROUGE-n F1 ×100: clipped n-gram overlap (each reference n-gram matches at most as often as it occurs)."""
    if n < 1:
        raise ValueError(f"ROUGE order must be >= 1, got {n}")
    ref, hyp = Counter(_ngrams(ref_tokens, n)), Counter(_ngrams(hyp_tokens, n))
    overlap = sum((ref & hyp).values())
    return _f1(overlap, sum(hyp.values()), sum(ref.values()))


def rouge_l(ref_tokens: Sequence[str], hyp_tokens: Sequence[str]) -> float:
    """ROUGE-L F1 ×100: P = LCS/|hyp|, R = LCS/|ref| on tokens (plain F1, no recall-weighting β)."""
    return _f1(lcs_length(ref_tokens, hyp_tokens), len(hyp_tokens), len(ref_tokens))


def distinct(hyps_tokens: Sequence[Sequence[str]], n: int) -> float:
    """Corpus Distinct-n ×100: unique n-grams / all n-grams, pooled over every hypothesis; 0 with no n-grams."""
    if n < 1:
        raise ValueError(f"Distinct order must be >= 1, got {n}")
    grams = [g for toks in hyps_tokens for g in _ngrams(toks, n)]
    return 100.0 * len(set(grams)) / len(grams) if grams else 0.0


def text_metric_rows(references: Sequence[str], hypotheses: Sequence[str]
                     ) -> tuple[dict[str, list[float]], list[list[str]]]:
    """Per-row scores of the per-sample metrics (BLEU-1..4, GLEU, ROUGE-1/2/L, each ×100, in row order) and the
    hypotheses' tokens, from which the corpus-level Distinct-n is computed. The paired bootstrap
    (rlmed.eval.bootstrap) resamples these rows; `text_metrics` averages them.

    Raises ValueError when the two lists differ in length.
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    refs = [tokenize(r) for r in references]
    hyps = [tokenize(h) for h in hypotheses]
    rows: dict[str, list[float]] = {key: [] for key in METRIC_KEYS[:8]}
    for ref, hyp in zip(refs, hyps):
        for n in range(1, 5):
            rows[f"bleu_{n}"].append(bleu(ref, hyp, n))
        rows["gleu"].append(gleu(ref, hyp))
        rows["rouge_1"].append(rouge_n(ref, hyp, 1))
        rows["rouge_2"].append(rouge_n(ref, hyp, 2))
        rows["rouge_l"].append(rouge_l(ref, hyp))
    return rows, hyps


def text_metrics(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """All metrics of methods.md §7 for paired references and hypotheses, keyed as ``METRIC_KEYS``, each ×100.

    Raises ValueError when the two lists differ in length or are empty (an average over nothing is undefined).
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        raise ValueError("no samples to score")
    rows, hyps = text_metric_rows(references, hypotheses)
    # sum()/len, left to right: the mean rlmed has always reported, to the last bit.
    out = {key: sum(values) / len(values) for key, values in rows.items()}
    out["distinct_1"] = distinct(hyps, 1)
    out["distinct_2"] = distinct(hyps, 2)
    return out
