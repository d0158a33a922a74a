"""Multiple-choice evaluation (CMB, CMExam, MedQA, MedMCQA style; methods.md §7): prompts, answer extraction, accuracy.

A question has ``len(options)`` options lettered A, B, C, ...; the gold answer of a single-answer question is one
letter, and ``extract_choice`` reports a multi-letter answer to it as None. A multiple-answer question (CMB's
多项选择题, CMExam's answers such as "ABD") has a set of letters as its gold answer and is scored by exact set
match; ``extract_choices`` reads the set an output chooses (rules at the end of this docstring).

How ``extract_choice`` reads an output (first rule that applies decides; the text is first full-width → half-width
converted and markdown emphasis ``*`` / backticks removed, so "**Ｂ**" reads as "B"):

1. Answer marker + letter. Markers: 答案 / 正确答案 / 最终答案 / 参考答案 / 标准答案 / 答 / 正确选项 / 最佳选项 / 应选 /
   选择 / 选 (not 不选), and English "answer", "final answer", "correct answer", "correct option", "correct choice"
   (any case); then optional fillers (是, 为, 应为, 应该是, 就是, ":", "is", "would be", ...), an optional opening
   bracket, and the letter. If every marker names the same single letter within range, that letter; if markers
   name different letters, several letters ("答案：AC", "答案是A和C"), or a letter out of range ("答案：E" with 4
   options), the answer is ambiguous or invalid: None. ("选项A" is not a marker: it discusses an option.)
2. Answer marker + option text: a marker directly followed by the text of an option ("答案是布洛芬") → its letter.
3. Leading label: the output starts with a letter label ("B", "B.", "(B)", "b)", "B、", "B 布洛芬") → that letter,
   or None when the letter is out of range. "A patient ..." and "I think ..." are English words, not labels.
4. Standalone letters anywhere: upper-case letters with no latin letter or digit beside them ("Based", "B12" and
   "e.g." do not count), lower-case ones only in brackets "(b)" / "b)"; letters out of range are ignored, and so
   are the English words "A"/"I" before a lower-case word, vitamins (维生素C), letter-terms (B超, A型, B族, T细胞,
   X线) and letters rejected in place (不选A, 排除A, 不是A). Exactly one distinct letter → it; several → None (the
   output discusses options without choosing one).
5. Option text anywhere: exactly one option's text (at least 2 characters, so "是"/"否" options do not match
   everywhere) occurs in the output → its letter; an option text that is a substring of another occurring option
   text (阿司匹林 in 阿司匹林肠溶片) does not count separately. Otherwise None.

How ``extract_choices`` reads the answer to a multiple-answer question (same normalisation; the first rule that
finds letters decides, and every letter must be an option's, else None):

1. Answer markers, each followed by a list of letters: a run ("答案：ACD") or letters joined by 、 , / ; 和 与 及
   or spaces ("答案是A、C、D", "Answer: A, C"). Markers naming different sets: None. A marker followed by an
   option's text names that option.
2. Letters anywhere, as rule 4 above reads them (same exclusions), plus standalone runs of distinct capitals
   ("ACD是正确的"): their union, as CMB's own scorer collects every option letter of the output.
3. The text of every option found in the output (rule 5's substring exclusion). Otherwise None.

A wrong choice and no choice are told apart by ``choice_rows`` (correct, answered), so a report can give the
share of unanswerable outputs separately from the wrong ones.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence

_FULL_TO_HALF = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)}
_FULL_TO_HALF[0x3000] = ord(" ")
_EMPHASIS = str.maketrans("", "", "*`")

_MARKER = (r"(?:正确答案|最终答案|参考答案|标准答案|答案|答|正确选项|最佳选项|应选|选择|(?<!不)选"
           r"|(?i:(?<![a-z])(?:final\s+answer|correct\s+answer|answer|correct\s+option|correct\s+choice)(?![a-z])))")
_FILLER = (r"(?:\s|[:=\-]|应该是|应该为|应当是|应当为|应是|应为|就是|是|为|即|选择|选"
           r"|(?i:(?<![a-z])(?:is|would\s+be|should\s+be|will\s+be|must\s+be|be)(?![a-z])))*")
_OPEN = r"[(\[【<{\"'“‘]?\s*"
_MARKER_RE = re.compile(_MARKER + _FILLER + _OPEN)
# A run of latin letters right after a marker: one letter is an answer; "AC" is a multi-letter answer; "Based" is
# a word (not an answer at all).
_RUN_RE = re.compile(r"([A-Za-z]+)(?![A-Za-z0-9])")
_MULTI_RE = re.compile(r"\s*(?:和|与|及|或|、|/|&|\+|(?i:and|or)(?![a-z]))\s*[(\[【]?\s*([A-Za-z])(?![A-Za-z0-9])")
_LOWER_WORD_AFTER = re.compile(r"\s+[a-z]")

_LEADING_RE = re.compile(
    r"\s*[(\[【<{\"'“‘]*\s*([A-Za-z])"
    r"(?=$|\.(?![A-Za-z])|[)\]】>}\"'”’、。:,;]|\s+(?![A-Za-z0-9])|\s*$)")

_UPPER_RE = re.compile(r"(?<![A-Za-z0-9])([A-Z])(?![A-Za-z0-9])(?!\.[A-Za-z])")
_LOWER_BRACKET_RE = re.compile(r"(?:\(\s*([a-z])\s*\)|(?<![A-Za-z0-9(])([a-z])\))")
_TERM_AFTER = ("超", "型", "族", "细胞", "受体", "线")  # B超, A型血, B族, T细胞, β受体-like, X线
_TERM_BEFORE = ("维生素", "维他命")
_NEGATED_BEFORE = ("不选", "排除", "不是")  # "不选A" / "排除A" name an option in order to reject it
_ENGLISH_WORD_AFTER = re.compile(r"\s+(?!(?:is|was|seems)(?![a-z]))[a-z]")

_OPTION_TEXT_MIN = 2
# Multiple-answer lists: a capital (or a run of distinct capitals, "ACD"), optionally bracketed, and the separators
# between list items ("A、C、D", "A, C", "A和C", "A C"); full-width commas are half-width after _normalize.
_ITEM_RE = re.compile(r"[(\[【]?\s*([A-Z]+)(?![A-Za-z0-9])\s*[)\]】]?")
_SEP_RE = re.compile(r"\s*(?:[、,/;&+]|和|与|及|或|(?i:and|or)(?![a-z]))\s*|\s+")
_UPPER_RUN_RE = re.compile(r"(?<![A-Za-z0-9])([A-Z]{2,})(?![A-Za-z0-9])")


def _normalize(text: str) -> str:
    return text.translate(_FULL_TO_HALF).translate(_EMPHASIS)


def _letters(options: Sequence[str]) -> str:
    if isinstance(options, str) or not options:
        raise ValueError("options must be a non-empty list of option texts")
    if len(options) > 26:
        raise ValueError(f"{len(options)} options: at most 26 can be lettered A..Z")
    return string.ascii_uppercase[:len(options)]


def _strip_label(letter: str, text: str) -> str:
    """Option text without a label of its own letter ("A. 布洛芬" → "布洛芬"), so it is not labelled twice."""
    return re.sub(rf"^\s*[(（]?\s*{letter}\s*[.．)）、:：]\s*", "", text, count=1, flags=re.IGNORECASE).strip()


def _option_texts(options: Sequence[str], letters: str) -> dict[str, str]:
    return {letter: _normalize(_strip_label(letter, opt)).strip() for letter, opt in zip(letters, options)}


def _after_marker(text: str, start: int, letters: str, texts: dict[str, str]) -> set[str] | None:
    """Letters a marker ending at ``start`` names (empty set: it names something invalid); None: nothing."""
    run = _RUN_RE.match(text, start)
    if run:
        word = run.group(1)
        if len(word) == 1:
            if word.islower() and _LOWER_WORD_AFTER.match(text, run.end()):
                return None  # "the answer is a bit unclear": the English article
            named = {word.upper()}
            for extra in _MULTI_RE.finditer(text, run.end()):
                if extra.start() != run.end():
                    break
                named.add(extra.group(1).upper())
                run = extra
            return named if named <= set(letters) else set()
        if len(set(word)) == len(word) and set(word) <= set(letters):
            return {*word}  # "答案：AC": several option letters for a single-answer question
        return None  # a word such as "Based"
    # No letter: does an option's text follow the marker? Longest first, so 阿司匹林肠溶片 wins over 阿司匹林.
    for letter, opt in sorted(texts.items(), key=lambda kv: len(kv[1]), reverse=True):
        if opt and text[start:start + len(opt)].lower() == opt.lower():
            return {f"text:{letter}"}
    return None


def _decide(found: set[str], letters: str) -> str | None:
    return next(iter(found)) if len(found) == 1 and next(iter(found)) in letters else None


def extract_choice(output: str, options: Sequence[str]) -> str | None:
    """The option letter a model output chooses, or None when it chooses none, several, or an invalid one.

    See the module docstring for the rules, applied in order.
    """
    letters = _letters(options)
    text = _normalize(output)
    texts = _option_texts(options, letters)

    # 1-2: answer markers. Letters decide before option texts; a marker naming something invalid still decides.
    marker_letters: set[str] = set()
    marker_texts: set[str] = set()
    invalid = False
    for m in _MARKER_RE.finditer(text):
        named = _after_marker(text, m.end(), letters, texts)
        if named is None:
            continue
        if not named:
            invalid = True
        elif any(x.startswith("text:") for x in named):
            marker_texts |= {x[5:] for x in named}
        else:
            marker_letters |= named
    if invalid or marker_letters:
        return None if invalid else _decide(marker_letters, letters)
    if marker_texts:
        return _decide(marker_texts, letters)

    # 3: a leading label.
    lead = _LEADING_RE.match(text)
    if lead:  # its look-ahead already refuses "A patient" / "I think": a label is not followed by a word
        letter = lead.group(1).upper()
        return letter if letter in letters else None

    # 4: standalone letters anywhere.
    found = _standalone_letters(text, letters)
    if found:
        return _decide(found, letters)

    # 5: the text of exactly one option.
    return _decide(_option_texts_found(text, texts), letters)


def _excluded(text: str, start: int, end: int) -> bool:
    """Whether the letter(s) at text[start:end] are a term, a vitamin or rejected in place, not a choice."""
    before = text[:start].rstrip()
    return text.startswith(_TERM_AFTER, end) or before.endswith(_TERM_BEFORE) or before.endswith(_NEGATED_BEFORE)


def _standalone_letters(text: str, letters: str, runs: bool = False) -> set[str]:
    """Rule 4's letters in range; with `runs`, also standalone runs of distinct capitals ("ACD"), all in range."""
    found: set[str] = set()
    for m in _UPPER_RE.finditer(text):
        letter, end = m.group(1), m.end()
        if letter in "AI" and _ENGLISH_WORD_AFTER.match(text, end):
            continue
        if not _excluded(text, m.start(), end) and letter in letters:
            found.add(letter)
    for m in _LOWER_BRACKET_RE.finditer(text):
        letter = (m.group(1) or m.group(2)).upper()
        if letter in letters:
            found.add(letter)
    if runs:
        for m in _UPPER_RUN_RE.finditer(text):
            word = m.group(1)
            if len(set(word)) == len(word) and set(word) <= set(letters) and not _excluded(text, m.start(), m.end()):
                found.update(word)
    return found


def _option_texts_found(text: str, texts: dict[str, str]) -> set[str]:
    """Letters of the option texts (2+ characters) found in `text`, less those inside another found one."""
    lowered = text.lower()
    present = {letter: opt.lower() for letter, opt in texts.items()
               if len(opt) >= _OPTION_TEXT_MIN and opt.lower() in lowered}
    return {letter for letter, opt in present.items()
            if not any(opt != other and opt in other for other in present.values())}


def _letter_list(text: str, start: int) -> tuple[list[str], int] | None:
    """The letters of a list starting at `start` ("ACD", "A、C、D", "(A) and (C)") and where it ends; None when
    no capital letter (or run of them) stands there, or the list runs into an English word ("A patient")."""
    item = _ITEM_RE.match(text, start)
    if not item:
        return None
    found, end = list(item.group(1)), item.end()
    while (sep := _SEP_RE.match(text, end)) and sep.end() > end and (nxt := _ITEM_RE.match(text, sep.end())):
        found += nxt.group(1)
        end = nxt.end()
    if _ENGLISH_WORD_AFTER.match(text, end) and len(found) == 1:
        return None
    return found, end


def extract_choices(output: str, options: Sequence[str]) -> str | None:
    """The set of option letters an output chooses for a multiple-answer question, as sorted letters ("ACD"),
    or None when it chooses none or names a letter that is no option's. See the module docstring."""
    letters = _letters(options)
    text = _normalize(output)
    texts = _option_texts(options, letters)

    named: list[frozenset[str]] = []
    for m in _MARKER_RE.finditer(text):
        listed = _letter_list(text, m.end())
        if listed is not None:
            if not set(listed[0]) <= set(letters):
                return None  # "答案：ACF" with five options: an invalid answer, not a partial one
            named.append(frozenset(listed[0]))
            continue
        lowered = _RUN_RE.match(text, m.end())
        if lowered and len(lowered.group(1)) == 1 and not _LOWER_WORD_AFTER.match(text, lowered.end()):
            letter = lowered.group(1).upper()  # "answer: (b)"
            if letter not in letters:
                return None
            named.append(frozenset(letter))
            continue
        for letter, opt in sorted(texts.items(), key=lambda kv: len(kv[1]), reverse=True):
            if opt and text[m.end():m.end() + len(opt)].lower() == opt.lower():
                named.append(frozenset(letter))
                break
    if named:
        return "".join(sorted(named[0])) if len(set(named)) == 1 else None
    found = _standalone_letters(text, letters, runs=True) or _option_texts_found(text, texts)
    return "".join(sorted(found)) or None


def format_options(options: Sequence[str], separator: str = ". ") -> str:
    """One "A. text" line per option (`separator` between letter and text), an option's own label dropped."""
    letters = _letters(options)
    return "\n".join(f"{letter}{separator}{_strip_label(letter, opt)}" for letter, opt in zip(letters, options))



def zero_shot_prompt(question: str, options: Sequence[str]) -> str:
    """The question, one "A. ..." line per option, then "答案：" for the model to complete."""
    return f"{question.strip()}\n{format_options(options)}\n答案："


def _gold_letter(answer: str, letters: str, where: str) -> str:
    letter = _normalize(str(answer)).strip().upper()
    if len(letter) != 1 or letter not in letters:
        raise ValueError(f"{where}: answer {answer!r} is not one of the option letters {letters}")
    return letter


def gold_letters(answer: str, options: Sequence[str], where: str = "answer") -> str:
    """A multiple-answer question's gold letters, sorted ("ACD" from "A、C、D", "D,A,C" or "acd"); ValueError
    naming `where` unless they are distinct option letters."""
    letters = _letters(options)
    found = re.sub(r"[\s、,;/]+", "", _normalize(str(answer))).upper()
    if not found or len(set(found)) != len(found) or not set(found) <= set(letters):
        raise ValueError(f"{where}: answer {answer!r} is not a set of distinct option letters of {letters}")
    return "".join(sorted(found))


def few_shot_prompt(question: str, options: Sequence[str], examples: Sequence[Mapping[str, object]]) -> str:
    """Solved examples, each a zero-shot prompt followed by its answer letter, then the question's zero-shot prompt.

    ``examples``: mappings with "question", "options" and "answer" (the letter); blocks are separated by a blank
    line. No examples gives the zero-shot prompt.
    """
    blocks = []
    for i, ex in enumerate(examples):
        ex_options = ex["options"]
        letter = _gold_letter(ex["answer"], _letters(ex_options), f"example {i}")
        blocks.append(zero_shot_prompt(str(ex["question"]), ex_options) + letter)
    blocks.append(zero_shot_prompt(question, options))
    return "\n\n".join(blocks)


def meds_ins_prompt(instruction: str, input: str, examples: Sequence[Mapping[str, str] | tuple[str, str]]) -> str:
    """MedS-Ins few-shot template (methods.md §7), one case per line:

    ``Case1: Input: {in1}, Output: {out1}`` ... ``CaseN: Input: {inN}, Output: {outN}``, then the line
    ``{INSTRUCTION} Please learn from the few-shot cases to see what content you have to output. Input: {INPUT}``.

    ``examples``: mappings with "input" and "output", or (input, output) pairs; at least one, since the template's
    own words refer to the cases.
    """
    if not examples:
        raise ValueError("the MedS-Ins template needs at least one few-shot case")
    cases = []
    for i, ex in enumerate(examples, start=1):
        ex_in, ex_out = (ex["input"], ex["output"]) if isinstance(ex, Mapping) else ex
        cases.append(f"Case{i}: Input: {ex_in}, Output: {ex_out}")
    tail = (f"{instruction} Please learn from the few-shot cases to see what content you have to output. "
            f"Input: {input}")
    return "\n".join(cases) + "\n" + tail


def choice_rows(outputs: Sequence[str], options_list: Sequence[Sequence[str]], answers: Sequence[str],
                multiple: Sequence[bool] | None = None) -> list[tuple[bool, bool]]:
    """Per row (correct, answered): the extracted letter equals the gold letter / any letter was extracted.
    A row marked in `multiple` is a multiple-answer question: its extracted set must equal the gold set exactly
    (no partial credit, as CMB scores them).

    Raises ValueError on length mismatch or a gold answer that is not one in-range letter (a set of them for a
    multiple-answer row; names the row).
    """
    multiple = [False] * len(outputs) if multiple is None else multiple
    if not (len(outputs) == len(options_list) == len(answers) == len(multiple)):
        raise ValueError(f"{len(outputs)} outputs, {len(options_list)} option lists, {len(answers)} answers, "
                         f"{len(multiple)} multiple-answer flags")
    out = []
    for i, (text, options, gold, several) in enumerate(zip(outputs, options_list, answers, multiple)):
        if several:
            gold_set = gold_letters(gold, options, f"row {i}")
            got = extract_choices(text, options)
            out.append((got == gold_set, got is not None))
            continue
        gold_letter = _gold_letter(gold, _letters(options), f"row {i}")
        got = extract_choice(text, options)
        out.append((got == gold_letter, got is not None))
    return out


def accuracy(outputs: Sequence[str], options_list: Sequence[Sequence[str]],
             answers: Sequence[str]) -> dict[str, float | int]:
    """{"accuracy": % of rows whose extracted letter equals the gold letter, "answered": % of rows with any
    extracted letter, "n": rows}. A row without an extracted letter counts as wrong.

    Raises ValueError on length mismatch, no rows, or a gold answer that is not one in-range letter (names the row).
    """
    rows = choice_rows(outputs, options_list, answers)
    if not rows:
        raise ValueError("no rows to score")
    n = len(rows)
    return {"accuracy": 100.0 * sum(c for c, _ in rows) / n, "answered": 100.0 * sum(a for _, a in rows) / n,
            "n": n}
