"""Offline reference similarity: how close a candidate is to the real doctor's reply, in 0..1.

No network and no model: ROUGE-L F1 over jieba words (the metric the Chinese medical papers report, methods.md
§7) or a character-level F1 (bag-of-characters overlap), cheap enough to run as a PPO/GRPO reward.

Whitespace and punctuation/symbol tokens are dropped before comparing: two answers should not look similar
because both use "，" and "。" a lot. jieba is initialised once, quietly (its logger set to WARNING), and its
default segmentation is deterministic.
"""

from __future__ import annotations

import logging
import threading
import unicodedata
from collections import Counter
from typing import Any, Literal, Sequence

from reward.base import Sample, Score

logger = logging.getLogger(__name__)
_jieba_lock = threading.Lock()
_jieba_tokenizer: Any = None


def _jieba() -> Any:
    """A shared jieba.Tokenizer, initialised once (its dictionary load is slow: docs/benchmarks.md)."""
    global _jieba_tokenizer
    with _jieba_lock:
        if _jieba_tokenizer is None:
            import jieba

            jieba.setLogLevel(logging.WARNING)
            logging.getLogger("jieba").setLevel(logging.WARNING)
            tokenizer = jieba.Tokenizer()
            tokenizer.initialize()
            _jieba_tokenizer = tokenizer
    return _jieba_tokenizer


def _is_content(token: str) -> bool:
    """False for whitespace and for tokens made only of punctuation or symbols."""
    token = token.strip()
    return bool(token) and not all(unicodedata.category(ch)[0] in "PSZ" for ch in token)


def tokenize(text: str, tokenizer: Literal["jieba", "char"] = "jieba") -> list[str]:
    """Content tokens of `text`: jieba words, or single characters; Latin letters are lower-cased."""
    text = text.lower()
    if tokenizer == "char":
        return [ch for ch in text if _is_content(ch)]
    if tokenizer == "jieba":
        return [tok for tok in _jieba().lcut(text) if _is_content(tok)]
    raise ValueError(f"tokenizer must be 'jieba' or 'char', got {tokenizer!r}")


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (O(len(a)·len(b)) time, O(len(b)) memory)."""
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def _f1(overlap: float, n_candidate: int, n_reference: int) -> float:
    if overlap == 0:
        return 0.0
    precision, recall = overlap / n_candidate, overlap / n_reference
    return 2 * precision * recall / (precision + recall)


def rouge_l_f1(candidate: Sequence[str], reference: Sequence[str]) -> float:
    """ROUGE-L F1 (β = 1): harmonic mean of LCS/len(candidate) and LCS/len(reference)."""
    return _f1(lcs_length(candidate, reference), len(candidate), len(reference))


def bag_f1(candidate: Sequence[str], reference: Sequence[str]) -> float:
    """F1 of the multiset overlap (each unit counted at most as often as in both texts)."""
    overlap = sum((Counter(candidate) & Counter(reference)).values())
    return _f1(overlap, len(candidate), len(reference))


class ReferenceSimilarity:
    """Scores `Sample.completion` against `Sample.reference` in 0..1 (1 = identical content tokens).

    metric "rouge_l": ROUGE-L F1 over `tokenizer` units (jieba words by default, or characters);
    metric "char_f1": character-level bag F1 (the tokenizer setting does not apply).
    A sample without a reference (None, or no content tokens) gets Score.failed.
    """

    def __init__(
        self, metric: Literal["rouge_l", "char_f1"] = "rouge_l", tokenizer: Literal["jieba", "char"] = "jieba"
    ) -> None:
        if metric not in ("rouge_l", "char_f1"):
            raise ValueError(f"metric must be 'rouge_l' or 'char_f1', got {metric!r}")
        if tokenizer not in ("jieba", "char"):
            raise ValueError(f"tokenizer must be 'jieba' or 'char', got {tokenizer!r}")
        self.metric, self.tokenizer = metric, tokenizer

    def __repr__(self) -> str:
        return f"ReferenceSimilarity(metric={self.metric!r}, tokenizer={self.tokenizer!r})"

    def similarity(self, candidate: str, reference: str) -> float:
        """The metric on two texts; ValueError when the reference has no content tokens."""
        units = "char" if self.metric == "char_f1" else self.tokenizer
        ref_tokens = tokenize(reference, units)
        if not ref_tokens:
            raise ValueError("reference has no content tokens")
        cand_tokens = tokenize(candidate, units)
        if self.metric == "char_f1":
            return bag_f1(cand_tokens, ref_tokens)
        return rouge_l_f1(cand_tokens, ref_tokens)

    async def score(self, samples: Sequence[Sample]) -> list[Score]:
        """One Score per sample; parts holds the metric under its name."""
        scores: list[Score] = []
        for sample in samples:
            if sample.reference is None:
                scores.append(Score.failed("no reference"))
                continue
            try:
                value = self.similarity(sample.completion, sample.reference)
            except ValueError as exc:
                scores.append(Score.failed(str(exc)))
                continue
            scores.append(Score(value=value, parts={self.metric: value}))
        return scores
