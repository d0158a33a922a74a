"""Rule-based checks as a reward source: knowledge-base hit rate (QiZhen), phrases, red-flag referral, length.

Every configured check is one entry in `Score.parts`, each in 0..1, and always present (a check that does not
apply to a sample, such as referral when the prompt names no red flag, passes with 1.0), so the parts have the
same keys for every sample. `Score.value` is the unweighted mean of the parts; with no check configured the
value is 1.0 (nothing was violated).

Parts:
- "qizhen_c1" / "qizhen_c2" / "qizhen_c3" (hit_criterion set): 1.0 when the answer hits at least one item /
  at least 1/2 of the items / at least 2/3 of the items listed in `metadata[kb_items_field]` (methods.md §7);
  "kb_hit_rate" (hit_criterion None): the fraction of items hit. An item is a string, or a list of
  alternative strings (synonyms) any one of which counts.
- "required": the fraction of required phrases present. "forbidden": 1.0 when none is present, else 0.0
  (one unsafe phrase is enough to fail).
- "referral": when a user turn mentions a red-flag term, 1.0 if the answer contains a referral phrase, else 0.0.
- "length": counts non-whitespace characters; 1.0 within [min_chars, max_chars]. Outside, with
  length_penalty 0 (the default) the bound is hard (0.0); with length_penalty > 0 it is soft:
  max(0, 1 - length_penalty * excess / bound).
"""

from __future__ import annotations

import logging
from typing import Any, Literal, Sequence

from reward.base import Sample, Score

logger = logging.getLogger(__name__)


def _normalise(text: str) -> str:
    # Case- and whitespace-insensitive matching: "阿莫西林 克拉维酸" and "阿莫西林克拉维酸" are the same drug.
    return "".join(text.lower().split())


def _contains(haystack: str, phrase: str) -> bool:
    needle = _normalise(phrase)
    return bool(needle) and needle in haystack


class Rules:
    """Cheap deterministic checks; see the module docstring for the parts and how value is formed."""

    def __init__(
        self,
        kb_items_field: str | None = None,
        hit_criterion: Literal[1, 2, 3] | None = None,
        required_phrases: Sequence[str] = (),
        forbidden_phrases: Sequence[str] = (),
        red_flag_terms: Sequence[str] = (),
        referral_phrases: Sequence[str] = ("就医", "医院", "医生"),
        min_chars: int | None = None,
        max_chars: int | None = None,
        length_penalty: float = 0.0,
    ) -> None:
        if hit_criterion not in (None, 1, 2, 3):
            raise ValueError(f"hit_criterion must be 1, 2, 3 or None, got {hit_criterion!r}")
        if hit_criterion is not None and kb_items_field is None:
            raise ValueError(f"hit_criterion needs kb_items_field (the metadata field listing the expected items), "
                             f"got hit_criterion={hit_criterion}, kb_items_field=None")
        if red_flag_terms and not referral_phrases:
            raise ValueError(f"red_flag_terms need at least one referral phrase, got referral_phrases="
                             f"{list(referral_phrases)!r}")
        if min_chars is not None and max_chars is not None and min_chars > max_chars:
            raise ValueError(f"min_chars ({min_chars}) > max_chars ({max_chars})")
        if length_penalty < 0:
            raise ValueError(f"length_penalty must be >= 0, got {length_penalty}")
        self.kb_items_field, self.hit_criterion = kb_items_field, hit_criterion
        self.required_phrases, self.forbidden_phrases = list(required_phrases), list(forbidden_phrases)
        self.red_flag_terms, self.referral_phrases = list(red_flag_terms), list(referral_phrases)
        self.min_chars, self.max_chars, self.length_penalty = min_chars, max_chars, length_penalty

    @staticmethod
    def qizhen_pass(hits: int, total: int, criterion: Literal[1, 2, 3]) -> bool:
        """QiZhen criterion on integers (no float rounding at the exact 1/2 and 2/3 edges)."""
        if criterion == 1:
            return hits >= 1
        if criterion == 2:
            return 2 * hits >= total
        return 3 * hits >= 2 * total

    def _kb_part(self, answer: str, metadata: dict[str, Any]) -> tuple[str, float] | str:
        """(part name, value), or an error string when the sample carries no usable item list."""
        items = metadata.get(self.kb_items_field)  # type: ignore[arg-type]
        if isinstance(items, str) or not isinstance(items, (list, tuple)) or not items:
            return f"metadata[{self.kb_items_field!r}] must be a non-empty list of expected items"
        hits = 0
        for item in items:
            alternatives = [item] if isinstance(item, str) else list(item)
            hits += any(_contains(answer, alt) for alt in alternatives)
        if self.hit_criterion is None:
            return "kb_hit_rate", hits / len(items)
        passed = self.qizhen_pass(hits, len(items), self.hit_criterion)
        return f"qizhen_c{self.hit_criterion}", float(passed)

    def _length_part(self, n: int) -> float:
        if self.min_chars is not None and n < self.min_chars:
            excess, bound = self.min_chars - n, self.min_chars
        elif self.max_chars is not None and n > self.max_chars:
            excess, bound = n - self.max_chars, self.max_chars
        else:
            return 1.0
        if self.length_penalty == 0:
            return 0.0
        return max(0.0, 1.0 - self.length_penalty * excess / max(bound, 1))

    def check(self, sample: Sample) -> Score:
        """All configured checks on one sample."""
        answer = _normalise(sample.completion)
        parts: dict[str, float] = {}
        notes: list[str] = []
        if self.kb_items_field is not None:
            kb = self._kb_part(answer, sample.metadata)
            if isinstance(kb, str):
                return Score.failed(kb)
            parts[kb[0]] = kb[1]
        if self.required_phrases:
            present = [p for p in self.required_phrases if _contains(answer, p)]
            parts["required"] = len(present) / len(self.required_phrases)
            missing = [p for p in self.required_phrases if p not in present]
            if missing:
                notes.append(f"missing required: {missing}")
        if self.forbidden_phrases:
            found = [p for p in self.forbidden_phrases if _contains(answer, p)]
            parts["forbidden"] = 0.0 if found else 1.0
            if found:
                notes.append(f"forbidden present: {found}")
        if self.red_flag_terms:
            user_text = _normalise(" ".join(
                m.get("content", "") for m in sample.prompt
                if m.get("role") == "user" and isinstance(m.get("content"), str)
            ))
            flags = [t for t in self.red_flag_terms if _contains(user_text, t)]
            referred = any(_contains(answer, p) for p in self.referral_phrases)
            parts["referral"] = 0.0 if flags and not referred else 1.0
            if flags and not referred:
                notes.append(f"red flag {flags} without referral")
        if self.min_chars is not None or self.max_chars is not None:
            n = len(answer)
            parts["length"] = self._length_part(n)
            if parts["length"] < 1.0:
                notes.append(f"length {n} outside [{self.min_chars}, {self.max_chars}]")
        value = sum(parts.values()) / len(parts) if parts else 1.0
        return Score(value=value, parts=parts, rationale="; ".join(notes))

    async def score(self, samples: Sequence[Sample]) -> list[Score]:
        """One Score per sample, in order."""
        return [self.check(sample) for sample in samples]
