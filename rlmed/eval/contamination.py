"""Eval-set contamination: which eval rows also occur, exactly or nearly, in the training inputs.

Normalisation (`normalize`), applied to both sides before any comparison:
1. Unicode NFKC: full-width letters, digits and punctuation become half-width (`ＡＢＣ１２３，` -> `ABC123,`),
   compatibility forms are unified.
2. casefold: lower-case (Latin and any other cased script).
3. Every punctuation character (Unicode category P*: ，。！？、“”《》 , . ! ? ...) becomes a space. Symbols
   (℃, %, +, ~) are kept: "38℃" and "38%" are different statements.
4. Whitespace: runs are collapsed, the ends stripped, and a space is kept only between two characters of a
   space-delimited script (Latin letters, digits, ...). Between Chinese/Japanese characters, or a CJK character
   and anything else, whitespace is dropped, because Chinese text carries no word spaces and a stray one is
   formatting, not content: "孩子 发烧" becomes "孩子发烧", while "take  2 tablets" becomes "take 2 tablets".

Matching, per eval row:
- "exact": its normalised text equals a training row's normalised text (similarity 1.0). An eval row whose
  normalised text is empty (only punctuation/whitespace) is never matched.
- "near": character n-grams (default n=5) of the normalised texts, with
    containment (default) = |grams(eval) ∩ grams(train)| / |grams(eval)|, or
    jaccard             = |grams(eval) ∩ grams(train)| / |grams(eval) ∪ grams(train)|,
  at or above `threshold` (default 0.8). Containment is the default because a leaked eval question usually
  sits inside a longer training row (a whole dialogue, a question plus its answer), where Jaccard stays low.
  A near match with similarity 1.0 means the eval text (up to normalisation) lies wholly inside the training row.
- Short texts: an eval row whose normalised text is shorter than `min_near_chars` (default 2 × n) is matched
  exactly only: a handful of shared n-grams cannot tell copying from a common phrase ("发烧怎么办" occurs in
  countless unrelated dialogues). A training row shorter than n has no n-grams and can only match exactly.
- Best match per eval row: exact beats near; among near matches the higher similarity wins; on equal
  similarity the training row seen first wins. `Match.count` says how many training rows matched at all.

Scale: the index is built over the EVAL rows (the small side) and the training rows are streamed once, never
held in memory. Exact matches use a dict of normalised texts. Near matches use prefix filtering: the eval
row's n-grams are ordered by how rare they are in the eval set, and only the first |grams| - need + 1 of them
are indexed, where need = ceil(threshold × |grams|) is the overlap a match requires — a training row that
shares none of those cannot reach `need`, so it is skipped without comparing. Only eval rows found through the
index are verified, with one set intersection each. Cost is about one hash lookup per training n-gram, not one
comparison per (eval, train) pair, in memory proportional to the eval set only (timings: docs/benchmarks.md).
"""

from __future__ import annotations

import math
import re
import sys
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Literal, Sequence

_WHITESPACE = re.compile(r"\s+")
# Scripts written without word spaces: CJK radicals .. ideographs (incl. kana, bopomofo), compatibility
# ideographs, and the supplementary ideograph planes.
_UNSPACED = re.compile(r"[\u2e80-\u9fff\uf900-\ufaff\U00020000-\U0003ffff]")
_EPS = 1e-9  # float slack when comparing similarities with the threshold


@lru_cache(maxsize=1)
def _punctuation() -> dict[int, str]:
    """A str.translate table mapping every Unicode punctuation character (category P*) to a space, built once:
    translate is faster than asking unicodedata about each character, or a regex (docs/benchmarks.md)."""
    return {c: " " for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)).startswith("P")}


def normalize(text: str) -> str:
    """The normalised form used for matching (rules in the module docstring)."""
    text = unicodedata.normalize("NFKC", text).casefold().translate(_punctuation())
    pieces = _WHITESPACE.split(text.strip())
    if len(pieces) <= 1:
        return pieces[0] if pieces else ""
    out = [pieces[0]]
    for piece in pieces[1:]:
        if not piece:
            continue
        left, right = out[-1][-1:], piece[0]
        # A space separates words only where both neighbours belong to a space-delimited script.
        if left and left.isalnum() and right.isalnum() and not _UNSPACED.match(left) and not _UNSPACED.match(right):
            out.append(" ")
        out.append(piece)
    return "".join(out)


def ngrams(text: str, n: int) -> set[str]:
    """The set of character n-grams of an (already normalised) text; empty when the text is shorter than n."""
    return {text[i:i + n] for i in range(len(text) - n + 1)}


@dataclass(frozen=True)
class Match:
    """The best training match of one eval row: eval_index (position in eval_texts), source (the training
    row's label), kind "exact" or "near", similarity (1.0 for exact), count (training rows that matched)."""

    eval_index: int
    source: str
    kind: Literal["exact", "near"]
    similarity: float
    count: int = 1

    def as_dict(self) -> dict[str, object]:
        return {"eval_index": self.eval_index, "source": self.source, "kind": self.kind,
                "similarity": self.similarity, "count": self.count}


class _Best:
    """Running best match of one eval row."""

    __slots__ = ("source", "kind", "similarity", "count")

    def __init__(self) -> None:
        self.source, self.kind, self.similarity, self.count = "", "", -1.0, 0

    def offer(self, source: str, kind: str, similarity: float) -> None:
        self.count += 1
        rank, best_rank = (kind == "exact", similarity), (self.kind == "exact", self.similarity)
        if rank > best_rank:  # strictly better only: the first-seen training row keeps a tie
            self.source, self.kind, self.similarity = source, kind, similarity


def find_contamination(
    eval_texts: Sequence[str],
    train_texts: Iterable[tuple[str, str]],
    threshold: float = 0.8,
    ngram: int = 5,
    *,
    measure: Literal["containment", "jaccard"] = "containment",
    min_near_chars: int | None = None,
) -> list[Match]:
    """Best match per contaminated eval row, sorted by eval_index (rows without a match are absent).

    train_texts: (source label, text) pairs, e.g. ("data/sft.jsonl:1234", text); streamed once.
    min_near_chars: eval rows with fewer normalised characters are matched exactly only (default 2 * ngram).
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if ngram < 1:
        raise ValueError(f"ngram must be >= 1, got {ngram}")
    if measure not in ("containment", "jaccard"):
        raise ValueError(f"measure must be 'containment' or 'jaccard', got {measure!r}")
    min_chars = 2 * ngram if min_near_chars is None else min_near_chars

    normalised = [normalize(t) for t in eval_texts]
    exact: dict[str, list[int]] = {}
    for i, norm in enumerate(normalised):
        if norm:
            exact.setdefault(norm, []).append(i)

    # Near-match index over the eval rows long enough for it.
    grams: dict[int, set[str]] = {
        i: ngrams(norm, ngram) for i, norm in enumerate(normalised) if len(norm) >= max(min_chars, ngram)
    }
    grams = {i: g for i, g in grams.items() if g}
    frequency: Counter[str] = Counter(g for gs in grams.values() for g in gs)
    need: dict[int, int] = {}
    index: dict[str, list[int]] = {}
    for i, gs in grams.items():
        # Overlap a match needs. Jaccard >= t implies overlap >= t * |union| >= t * |eval grams|, so the same
        # bound (and prefix) is safe for both measures; verification computes the exact value.
        need[i] = max(1, math.ceil(threshold * len(gs) - _EPS))
        prefix = sorted(gs, key=lambda g: (frequency[g], g))[: len(gs) - need[i] + 1]
        for g in prefix:
            index.setdefault(g, []).append(i)
    index_keys = index.keys()

    best: dict[int, _Best] = {}
    for source, text in train_texts:
        norm = normalize(text)
        if not norm:
            continue
        exact_hits = exact.get(norm, ())
        for i in exact_hits:
            best.setdefault(i, _Best()).offer(source, "exact", 1.0)
        if not index or len(norm) < ngram:
            continue
        train_grams = ngrams(norm, ngram)
        candidates: set[int] = set()
        for g in index_keys & train_grams:  # set intersection in C: only n-grams some eval row indexed
            candidates.update(index[g])
        for i in candidates:
            if i in exact_hits:
                continue  # already an exact match with this training row
            shared = len(grams[i] & train_grams)
            if shared < need[i]:
                continue
            if measure == "containment":
                similarity = shared / len(grams[i])
            else:
                similarity = shared / (len(grams[i]) + len(train_grams) - shared)
            if similarity + _EPS >= threshold:
                best.setdefault(i, _Best()).offer(source, "near", similarity)

    return [Match(i, b.source, b.kind, b.similarity, b.count)  # type: ignore[arg-type]
            for i, b in sorted(best.items())]


def summarize(matches: Sequence[Match], n_eval: int) -> dict[str, object]:
    """Counts and the contaminated share of the eval set, for metrics files and reports."""
    exact = sum(m.kind == "exact" for m in matches)
    return {"n_eval": n_eval, "contaminated": len(matches), "exact": exact, "near": len(matches) - exact,
            "rate": len(matches) / n_eval if n_eval else None}


__all__ = ["Match", "find_contamination", "normalize", "ngrams", "summarize"]
