"""De-identification of Chinese medical dialogue text before it leaves the machine.

Patient dialogues carry phone numbers, resident ID-card numbers, e-mail addresses and record numbers. Anything
sent to a hosted judge must have them masked first. The patterns here are deliberately anchored (digit
boundaries, fixed lengths, a plausible birth date inside ID numbers) so that ordinary clinical numbers — doses
like 500mg, temperatures like 38.5℃, ages, weights, dates — are left untouched: masking those would destroy
exactly the content a judge must see.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Iterable

logger = logging.getLogger(__name__)

# name -> (placeholder label, regex). Order matters: earlier patterns mask first, so an e-mail containing a
# phone number is masked as one e-mail, and an ID number is not half-taken by the mobile-number pattern.
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_BIRTH_DATE = r"(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"
DEFAULT_PATTERNS: dict[str, tuple[str, str]] = {
    "email": ("邮箱", r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}"),
    # 6-digit region code, birth date, 3-digit sequence, check digit (digit or X).
    "id_card": ("身份证号", r"(?<![0-9A-Za-z])[1-9]\d{5}" + _BIRTH_DATE + r"\d{3}[0-9Xx](?![0-9A-Za-z])"),
    # Mainland mobile: 1[3-9] + 9 digits, optional +86/0086/86 prefix, optional space or dash groups (3-4-4).
    "mobile": ("电话", r"(?<![\d+])(?:(?:\+|00)?86[\s\-]?)?1[3-9]\d[\s\-]?\d{4}[\s\-]?\d{4}(?!\d)"),
    # Landline: area code 0xx/0xxx (optionally in brackets) + 7-8 digit local number.
    "landline": ("电话", r"(?<!\d)(?:\(0\d{2,3}\)|（0\d{2,3}）|0\d{2,3})[\s\-]?\d{7,8}(?!\d)"),
    # Chinese passports (E/G/D/S/P + 8 digits, or E + letter + 7 digits) and HK/Macau permits (H/M + 8-10).
    "passport": ("证件号", r"(?<![0-9A-Za-z])(?:[EGDSP]\d{8}|E[A-Z]\d{7}|[HM]\d{8,10})(?![0-9A-Za-z])"),
    "ipv4": ("IP地址", r"(?<![\d.])(?:" + _OCTET + r"\.){3}" + _OCTET + r"(?![\d.])"),
    # Hospital record numbers only when labelled: a bare number is far more likely to be clinical.
    "record_no": ("病历号", r"(?:住院号|病历号|门诊号|就诊卡号|病案号)[:：\s]*(?P<value>[A-Za-z0-9\-]{4,})"),
}


def _replacer(placeholder: str):
    """A re.sub callback: replace the `value` group when the pattern has one, else the whole match."""

    def replace(match: re.Match[str]) -> str:
        if "value" in match.re.groupindex and match.group("value") is not None:
            whole, start = match.group(0), match.start()
            return whole[: match.start("value") - start] + placeholder + whole[match.end("value") - start :]
        return placeholder

    return replace


class Deidentifier:
    """Masks personal identifiers in text with bracketed placeholders such as [电话], [身份证号], [邮箱].

    patterns: extra or overriding patterns by name. A name that matches a default (see DEFAULT_PATTERNS)
    replaces that default's regex and keeps its placeholder; an empty string disables that default; a new name
    adds a pattern whose placeholder is `[name]`, applied after the defaults. A pattern with a named group
    `value` masks only that group (so a label such as "住院号：" stays readable).
    enabled: False turns masking off entirely (for data that is already clean or never leaves the machine).
    """

    def __init__(self, patterns: dict[str, str] | None = None, enabled: bool = True) -> None:
        self.enabled = enabled
        table: dict[str, tuple[str, str]] = dict(DEFAULT_PATTERNS)
        for name, regex in (patterns or {}).items():
            if not regex:
                table.pop(name, None)
                continue
            label = table[name][0] if name in table else name
            table[name] = (label, regex)
        self._compiled: list[tuple[str, str, re.Pattern[str]]] = []
        for name, (label, regex) in table.items():
            try:
                self._compiled.append((name, f"[{label}]", re.compile(regex)))
            except re.error as exc:
                raise ValueError(f"de-identification pattern {name!r} is not a valid regex: {exc}") from exc

    @property
    def pattern_names(self) -> list[str]:
        """Names of the active patterns, in the order they are applied."""
        return [name for name, _, _ in self._compiled]

    def mask(self, text: str) -> str:
        """Return `text` with every identifier replaced by its placeholder (unchanged when disabled)."""
        if not self.enabled or not text:
            return text
        for name, placeholder, pattern in self._compiled:
            text, count = pattern.subn(_replacer(placeholder), text)
            if count:
                # Counts only, never the matched values: logs may themselves leave the machine.
                logger.debug("de-identified %d %s occurrence(s)", count, name)
        return text

    def mask_messages(self, messages: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Return copies of chat messages with their text content masked.

        Content may be a string or a list of parts ({"type": "text", "text": ...}); other fields are kept.
        """
        out: list[dict[str, Any]] = []
        for message in messages:
            copy = dict(message)
            content = copy.get("content")
            if isinstance(content, str):
                copy["content"] = self.mask(content)
            elif isinstance(content, list):
                copy["content"] = [
                    {**part, "text": self.mask(part["text"])}
                    if isinstance(part, dict) and isinstance(part.get("text"), str)
                    else part
                    for part in content
                ]
            out.append(copy)
        return out
