"""QiZhen hit-rate criteria (methods.md §7): does an answer name the items of a knowledge-base entry?

For each row there is an answer and the entry's expected items (e.g. a drug's indications). With h items hit out
of n distinct items: criterion 1 = h ≥ 1; criterion 2 = h ≥ n/2; criterion 3 = h ≥ 2n/3, compared in integers
(2h ≥ n, 3h ≥ 2n) so that exactly one half (1 of 2) and exactly two thirds (2 of 3) count as reached.

Matching rules:
- normalisation, applied to the answer and to every item: full-width ASCII forms (U+FF01..U+FF5E) become their
  half-width forms, every whitespace character is removed (Chinese text has no meaningful spaces, and model
  outputs often put spaces inside terms), and the text is lower-cased (only latin/greek letters change);
- an item is hit when its normalised text occurs in the normalised answer as a substring;
- items that are equal after normalisation count once (duplicates and " 布洛芬 " vs "布洛芬" are one item), and
  items that normalise to nothing (blank strings) are ignored;
- an item that is a substring of another item (头痛 / 偏头痛) is only hit by an occurrence that is not inside an
  occurrence of the longer item: an answer saying only "偏头痛" names one item, not two. Items are resolved
  longest first; every occurrence of a longer item claims its span whether or not that item already counted.

A row whose item list is empty (after the rules above) has no fraction to reach: ``criteria`` raises ValueError,
and ``hit_rates`` raises ValueError naming the row index, so a broken knowledge-base row cannot silently shift the
rates. ``hits`` returns 0 for it.
"""

from __future__ import annotations

from collections.abc import Sequence

HIT_RATE_KEYS = ("hit_rate_1", "hit_rate_2", "hit_rate_3")

# Full-width ASCII variants sit at a fixed offset from ASCII; the ideographic space is whitespace and goes anyway.
_FULL_TO_HALF = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)}


def normalize(text: str) -> str:
    """Full-width → half-width, all whitespace removed, lower-cased."""
    return "".join(text.translate(_FULL_TO_HALF).split()).lower()


def _distinct_items(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(norm for norm in map(normalize, items) if norm))


def _occurrences(haystack: str, needle: str) -> list[tuple[int, int]]:
    spans, start = [], haystack.find(needle)
    while start != -1:
        spans.append((start, start + len(needle)))
        start = haystack.find(needle, start + 1)  # +1, not +len: overlapping occurrences are separate mentions
    return spans


def _count_hits(answer: str, distinct_items: list[str]) -> int:
    text = normalize(answer)
    claimed: list[tuple[int, int]] = []
    count = 0
    for item in sorted(distinct_items, key=len, reverse=True):
        spans = _occurrences(text, item)
        if any(not any(cs <= s and e <= ce for cs, ce in claimed) for s, e in spans):
            count += 1
        claimed.extend(spans)
    return count


def hits(answer: str, items: Sequence[str]) -> int:
    """How many distinct (normalised) items the answer names; 0 for an empty item list."""
    return _count_hits(answer, _distinct_items(items))


def criteria(answer: str, items: Sequence[str]) -> tuple[bool, bool, bool]:
    """(≥ 1 item hit, ≥ 1/2 of the items hit, ≥ 2/3 hit); ValueError when there are no items."""
    distinct_items = _distinct_items(items)
    if not distinct_items:
        raise ValueError("no expected items: the hit-rate criteria are undefined")
    n, h = len(distinct_items), _count_hits(answer, distinct_items)
    return h >= 1, 2 * h >= n, 3 * h >= 2 * n


def hit_rows(answers: Sequence[str], items: Sequence[Sequence[str]]) -> list[tuple[bool, bool, bool]]:
    """Per row, `criteria` of its answer against its items (the per-row values hit_rates averages).

    Raises ValueError on a length mismatch, on bare strings for item lists, and on a row with no items (naming
    its index).
    """
    if len(answers) != len(items):
        raise ValueError(f"{len(answers)} answers but {len(items)} item lists")
    if isinstance(items, str) or any(isinstance(row, str) for row in items):
        # A bare string would be read as a list of characters, each one "hit" almost always.
        raise ValueError("items must be a list of item lists, not strings")
    out = []
    for index, (answer, row) in enumerate(zip(answers, items)):
        try:
            out.append(criteria(answer, row))
        except ValueError:
            raise ValueError(f"row {index} has no expected items") from None
    return out


def hit_rates(answers: Sequence[str], items: Sequence[Sequence[str]]) -> dict[str, float]:
    """Share of rows meeting each criterion, ×100, keyed hit_rate_1/2/3.

    Raises ValueError on a length mismatch, on no rows, and on a row with no items (naming its index).
    """
    if len(answers) != len(items):
        raise ValueError(f"{len(answers)} answers but {len(items)} item lists")
    if not answers:
        raise ValueError("no rows to score")
    rows = hit_rows(answers, items)
    return {key: 100.0 * sum(met[k] for met in rows) / len(rows) for k, key in enumerate(HIT_RATE_KEYS)}
