"""Rubric prompts: grading an answer against rubric items (HealthBench's grader) and writing rubrics (RaR).

A rubric item is `{criterion, points, tags}` as HealthBench lays it out: points > 0 for something a good answer
does, points < 0 for a mistake it must not make. The grader is asked, per item, whether the item's criterion is
met — for a negative item, whether the answer makes that mistake — and answers `{explanation, criteria_met}`;
reward.rubric turns the verdicts into points. The writer gets a dialogue and the real doctor's reply and writes
7-20 items in RaR's categories (Essential, Important, Optional, Pitfall), each category with its band of points.

Fencing is reward.prompts': the dialogue, the answer, the doctor's reply and every criterion are untrusted text,
placed in `<data-TAG ...>` fences under a tag hashed from all of them, and a reply counts only when it is exactly
one JSON object that copies the tag into "request" (reward.prompts.reply_object). Parsers never guess: a
`criteria_met` that is not a JSON boolean, an item missing or given twice, a category or points outside the
bands all raise ValueError, and the client asks again or the caller records a failure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from reward.prompts import (SECTION, JudgeRequest, Messages, fence, fence_tag, numbered_entries, reply_object,
                            render_dialogue)

LANGUAGES = ("zh", "en")

# RaR's categories and the points each may carry (HealthBench's items run from -10 to +10). The bands keep
# the writer's weights comparable across prompts: an Essential item always outweighs an Optional one.
CATEGORIES: dict[str, tuple[float, float]] = {
    "essential": (5.0, 10.0),
    "important": (3.0, 4.0),
    "optional": (1.0, 2.0),
    "pitfall": (-10.0, -1.0),
}
CATEGORY_TAG = "category:"  # items written here carry their category as a HealthBench-style tag


@dataclass(frozen=True)
class RubricItem:
    """One rubric item: what to check, its points (negative: a mistake to avoid), and tags (e.g. axis:accuracy)."""

    criterion: str
    points: float
    tags: tuple[str, ...] = ()

    def as_row(self) -> dict[str, Any]:
        """HealthBench's layout of an item, as written to rubrics.jsonl."""
        points: float | int = int(self.points) if float(self.points).is_integer() else self.points
        return {"criterion": self.criterion, "points": points, "tags": list(self.tags)}


def check_item(entry: Any, at: str) -> RubricItem:
    """One `{criterion, points, tags}` object as a RubricItem, or ValueError saying what to fix: a non-empty
    criterion, finite non-zero points (negative for a mistake to avoid), tags a list of non-empty strings."""
    if not isinstance(entry, dict):
        raise ValueError(f"{at}: expected an object {{criterion, points, tags}}, got {type(entry).__name__}")
    criterion, points, tags = entry.get("criterion"), entry.get("points"), entry.get("tags", [])
    if not isinstance(criterion, str) or not criterion.strip():
        raise ValueError(f"{at}: 'criterion' must be a non-empty string, got {criterion!r:.80}")
    if isinstance(points, bool) or not isinstance(points, (int, float)) or not math.isfinite(points) or points == 0:
        raise ValueError(f"{at}: 'points' must be a non-zero number (negative for a mistake to avoid), got {points!r}")
    if not isinstance(tags, list) or not all(isinstance(t, str) and t.strip() for t in tags):
        raise ValueError(f"{at}: 'tags' must be a list of non-empty strings, got {tags!r:.80}")
    return RubricItem(criterion.strip(), float(points), tuple(t.strip() for t in tags))


def check_items(raw: Any, where: str) -> tuple[RubricItem, ...]:
    """A list of item objects (check_item) as RubricItems, at least one of them positive: the score divides by
    the positive points."""
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{where}: expected a non-empty list of {{criterion, points, tags}} items, got {raw!r:.80}")
    items = tuple(check_item(entry, f"{where} item {n}") for n, entry in enumerate(raw, 1))
    if not any(item.points > 0 for item in items):
        raise ValueError(f"{where}: no item has positive points; the score is achieved points over the positive "
                         f"points, so give at least one thing a good answer does")
    return items


def format_points(points: float) -> str:
    """Points as the grader sees them, sign always shown: +5, -3, +1.5."""
    return f"{points:+g}"


# ----------------------------------------------------------------------------------------------- wording

GRADE_TEXT = {
    "zh": {
        "role": "你是一名资深儿科医生，负责按评分细则检查医疗助手的回答。你将看到一段患者（或家长）与医生助手的对话、"
        "助手对最后一次提问的回答，以及{what}。每条细则带有分值（points 属性）。",
        "one": "一条评分细则。请只判断这条回答是否满足这条细则，不评价细则以外的方面",
        "all": "若干条编号的评分细则。请逐条判断这条回答是否满足每条细则，各条分别判断，不评价细则以外的方面",
        "rules": "判断规则：\n"
        "- 正分细则写的是回答应当做到的事：做到了，criteria_met 为 true；没有做到或只做到一部分，为 false。\n"
        "- 负分细则写的是回答不应出现的错误：回答出现了这个错误，criteria_met 为 true；没有出现，为 false。\n"
        "- 细则列出多项要求（如“应说明A、B和C”）时，全部做到才算满足；细则用“例如”“如”举例时，做到其中之一即可。\n"
        "- 只看回答实际写了什么，不因回答长就认为满足。",
        "reference": "真实医生的回复只用来帮助你理解病情，是否满足仍以细则为准。",
        "criterion": "【评分细则】", "criteria": "【评分细则（共 {n} 条）】",
        "format_one": "输出格式：只输出一个 JSON 对象，前后不要有任何其他文字；\"request\" 必须原样抄写本次请求的标识 "
        "{tag}；\"criteria_met\" 只能是 true 或 false：\n"
        '{{"request": "{tag}", "explanation": "简要说明回答为何满足或不满足这条细则", "criteria_met": false}}',
        "format_all": "输出格式：只输出一个 JSON 对象，前后不要有任何其他文字；\"request\" 必须原样抄写本次请求的标识 "
        "{tag}；\"items\" 为每条细则（id 为 {ids}）各给出一项且只给一项，\"criteria_met\" 只能是 true 或 false：\n"
        '{{"request": "{tag}", "items": [{{"id": 1, "explanation": "简要理由", "criteria_met": true}}, ...]}}',
    },
    "en": {
        "role": "You are a senior pediatrician checking a medical assistant's answer against a rubric. You will see "
        "a dialogue between a patient (or a parent) and the assistant, the assistant's answer to the last "
        "question, and {what}. Each criterion carries its points (the points attribute).",
        "one": "one rubric criterion. Judge only whether the answer meets this criterion, nothing beyond it",
        "all": "numbered rubric criteria. Judge for each criterion separately whether the answer meets it, "
        "nothing beyond them",
        "rules": "Rules:\n"
        "- A criterion with positive points says what the answer should do: criteria_met is true when it does, "
        "false when it does not or does only part of it.\n"
        "- A criterion with negative points names a mistake the answer must not make: criteria_met is true when "
        "the answer makes that mistake, false when it does not.\n"
        "- When a criterion lists several requirements (\"should mention A, B and C\"), all are needed; when it "
        "gives examples (\"such as\", \"for example\"), one of them is enough.\n"
        "- Judge what the answer actually says; length alone meets nothing.",
        "reference": "The real doctor's reply is there to help you understand the case; the criteria decide.",
        "criterion": "[Rubric criterion]", "criteria": "[Rubric criteria ({n})]",
        "format_one": "Output format: exactly one JSON object and no other text; \"request\" must be this request's "
        "id {tag}, copied exactly; \"criteria_met\" must be true or false:\n"
        '{{"request": "{tag}", "explanation": "brief reason the answer meets or misses the criterion", '
        '"criteria_met": false}}',
        "format_all": "Output format: exactly one JSON object and no other text; \"request\" must be this request's "
        "id {tag}, copied exactly; \"items\" has one entry for each criterion (ids {ids}), no more; "
        "\"criteria_met\" must be true or false:\n"
        '{{"request": "{tag}", "items": [{{"id": 1, "explanation": "brief reason", "criteria_met": true}}, ...]}}',
    },
}

WRITE_TEXT = {
    "zh": {
        "role": "你是一名资深儿科医生，负责为医疗问答编写评分细则（rubric）。你将看到一段患者（或家长）与医生的对话，以及"
        "真实医生对最后一次提问的回复。请以真实医生的回复和公认的医学知识为依据，写出 {low}–{high} 条评分细则，"
        "用来检查任何一个回答是否答好了这次提问。",
        "rules": "要求：\n"
        "- 每条细则只检查一件具体、能判断是否做到的事，独立成句，不依赖其他细则；不要提到“参考答案”或“医生的回复”"
        "（评分者看不到它们），需要的医学事实直接写进细则。\n"
        "- 每条细则归入一个类别，并给出该类别范围内的分值：\n"
        "  - Essential（必备，5 到 10 分）：关键的判断、安全提示、何时必须就医等，缺了回答就不合格；\n"
        "  - Important（重要，3 到 4 分）：明显提升回答质量的内容；\n"
        "  - Optional（可选，1 到 2 分）：锦上添花的内容，如语气、条理；\n"
        "  - Pitfall（错误，-10 到 -1 分）：回答不应出现的错误或有害内容，写出错误本身（例如“建议给 3 岁儿童服用"
        "阿司匹林退热”），回答出现这个错误就扣分。\n"
        "- 至少写一条 Essential，最好也写出常见的 Pitfall；细则之间不要重复。",
        "reference": "【真实医生的回复】",
        "format": "输出格式：只输出一个 JSON 对象，前后不要有任何其他文字；\"request\" 必须原样抄写本次请求的标识 "
        "{tag}；\"category\" 只能是 Essential、Important、Optional、Pitfall 之一：\n"
        '{{"request": "{tag}", "rubrics": [{{"criterion": "说明体温超过 40℃ 或精神萎靡时应立即就医", '
        '"category": "Essential", "points": 8}}, ...]}}',
    },
    "en": {
        "role": "You are a senior pediatrician writing a grading rubric for a medical consultation. You will see a "
        "dialogue between a patient (or a parent) and a doctor, and the real doctor's reply to the last question. "
        "Using that reply and accepted medical knowledge, write {low}-{high} rubric criteria that check whether "
        "any answer to this question answers it well.",
        "rules": "Requirements:\n"
        "- Each criterion checks one concrete thing that can be judged done or not done, stands on its own and "
        "does not depend on other criteria; never mention \"the reference\" or \"the doctor's reply\" (the "
        "grader does not see them): write the medical facts needed into the criterion itself.\n"
        "- Put each criterion in one category, with points inside that category's band:\n"
        "  - Essential (5 to 10 points): the key judgement, safety advice, when care is needed at once; an answer "
        "without it fails;\n"
        "  - Important (3 to 4 points): content that clearly makes the answer better;\n"
        "  - Optional (1 to 2 points): nice to have, such as tone or structure;\n"
        "  - Pitfall (-10 to -1 points): a mistake or harmful content the answer must not contain, written as the "
        "mistake itself (e.g. \"Recommends aspirin for a 3-year-old's fever\"); an answer that makes it loses "
        "the points.\n"
        "- Write at least one Essential criterion, preferably also the common Pitfalls; no two criteria alike.",
        "reference": "[Real doctor's reply]",
        "format": "Output format: exactly one JSON object and no other text; \"request\" must be this request's id "
        "{tag}, copied exactly; \"category\" is one of Essential, Important, Optional, Pitfall:\n"
        '{{"request": "{tag}", "rubrics": [{{"criterion": "Advises urgent care if the fever passes 40 °C or the '
        'child is listless", "category": "Essential", "points": 8}}, ...]}}',
    },
}


def check_language(language: str) -> str:
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {list(LANGUAGES)}, got {language!r}")
    return language


# ----------------------------------------------------------------------------------------------- building


def build_grading(prompt: Messages, answer: str, items: Sequence[RubricItem], language: str,
                  reference: str | None = None) -> JudgeRequest:
    """A request asking whether `answer` meets each of `items`: one item is HealthBench's per-criterion call,
    several are graded in one call (ids 1..n in the given order; `order` is the item indices)."""
    text, section = GRADE_TEXT[language], SECTION[language]
    dialogue = render_dialogue(prompt, language)
    criteria = [item.criterion for item in items]
    tag = fence_tag([dialogue, answer, *criteria, *([reference] if reference else [])])
    parts = [section["dialogue"], fence(dialogue, tag, kind="dialogue")]
    if reference:
        parts += [section["reference"], fence(reference, tag, kind="reference")]
    parts += [section["answer"], fence(answer, tag, kind="answer")]
    single = len(items) == 1
    if single:
        parts += [text["criterion"], fence(criteria[0], tag, kind="criterion", points=format_points(items[0].points))]
    else:
        parts.append(text["criteria"].format(n=len(items)))
        parts += [fence(c, tag, kind="criterion", id=str(n), points=format_points(item.points))
                  for n, (c, item) in enumerate(zip(criteria, items), 1)]
    instructions = [text["role"].format(what=text["one" if single else "all"]), text["rules"]]
    if reference:
        instructions.append(text["reference"])
    ids = ", ".join(str(n) for n in range(1, len(items) + 1))
    instructions += [section["fence_notice"].format(tag=tag),
                     text["format_one" if single else "format_all"].format(tag=tag, ids=ids)]
    messages = [{"role": "system", "content": "\n\n".join(instructions)},
                {"role": "user", "content": "\n\n".join(parts)}]
    return JudgeRequest(messages, tag, list(range(len(items))))


def build_writing(prompt: Messages, reference: str, language: str, min_items: int, max_items: int) -> JudgeRequest:
    """A request asking for min_items..max_items rubric items for `prompt`, grounded in the doctor's `reference`."""
    text, section = WRITE_TEXT[language], SECTION[language]
    dialogue = render_dialogue(prompt, language)
    tag = fence_tag([dialogue, reference])
    parts = [section["dialogue"], fence(dialogue, tag, kind="dialogue"), text["reference"],
             fence(reference, tag, kind="reference")]
    system = "\n\n".join([text["role"].format(low=min_items, high=max_items), text["rules"],
                          section["fence_notice"].format(tag=tag), text["format"].format(tag=tag)])
    return JudgeRequest([{"role": "system", "content": system}, {"role": "user", "content": "\n\n".join(parts)}],
                        tag, [])


# ----------------------------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Verdict:
    """The grader's answer on one item: whether its criterion is met, and why."""

    met: bool
    explanation: str


def _verdict(obj: Any, where: str) -> Verdict:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected an object with criteria_met, got {type(obj).__name__}")
    met, explanation = obj.get("criteria_met"), obj.get("explanation", "")
    if not isinstance(met, bool):  # "true", 1, "yes": not a verdict this parser may read into one
        raise ValueError(f"{where}: criteria_met must be true or false, got {met!r:.40}")
    if not isinstance(explanation, str):
        raise ValueError(f"{where}: explanation must be a string, got {type(explanation).__name__}")
    return Verdict(met, explanation)


def parse_grading(text: str, tag: str, n_items: int) -> list[Verdict]:
    """The verdicts of a grading reply, in item order: `{"request", "explanation", "criteria_met"}` for one item,
    `{"request", "items": [{"id", "explanation", "criteria_met"}, ...]}` covering ids 1..n exactly once for more."""
    obj = reply_object(text, tag)
    if n_items == 1:
        return [_verdict(obj, "grading")]
    return numbered_entries(obj, "items", n_items, "grading", "item", _verdict)


def parse_writing(text: str, tag: str, min_items: int, max_items: int) -> tuple[RubricItem, ...]:
    """The items of a writing reply, each tagged `category:<name>`; ValueError unless there are min..max items, each
    with a non-empty criterion, a known category and points inside its band, no two alike, one Essential at least."""
    obj = reply_object(text, tag)
    entries = obj.get("rubrics")
    if not isinstance(entries, list):
        raise ValueError("writing: missing 'rubrics' list")
    if not min_items <= len(entries) <= max_items:
        raise ValueError(f"writing: {len(entries)} items, expected {min_items} to {max_items}")
    items, seen = [], set()
    for n, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise ValueError(f"writing item {n}: expected an object, got {type(entry).__name__}")
        category = entry.get("category")
        band = CATEGORIES.get(category.strip().lower()) if isinstance(category, str) else None
        if band is None:
            raise ValueError(f"writing item {n}: category must be one of Essential, Important, Optional, Pitfall, "
                             f"got {category!r:.40}")
        name = category.strip().lower()
        item = check_item({"criterion": entry.get("criterion"), "points": entry.get("points"),
                           "tags": [CATEGORY_TAG + name]}, f"writing item {n}")
        if not band[0] <= item.points <= band[1]:
            raise ValueError(f"writing item {n}: {category} points must be within {band[0]:g}..{band[1]:g}, "
                             f"got {item.points:g}")
        if item.criterion in seen:
            raise ValueError(f"writing item {n}: the same criterion twice: {item.criterion!r:.60}")
        seen.add(item.criterion)
        items.append(item)
    if not any(item.tags == (CATEGORY_TAG + "essential",) for item in items):
        raise ValueError("writing: no Essential item")
    return tuple(items)


__all__ = ["CATEGORIES", "LANGUAGES", "RubricItem", "Verdict", "build_grading", "build_writing", "check_item",
           "check_items", "check_language", "parse_grading", "parse_writing"]
