"""Compose parent messages, doctor replies and follow-up turns from facts and templates."""

import facts
import templates as T

MIN_REPLY, MAX_REPLY = 40, 250
NO_IBUPROFEN = {"水痘", "小儿腹泻"}  # dehydration risk / varicella: paracetamol only


def join_items(items: list[str]) -> str:
    """Short phrases joined with 、, clauses (with their own punctuation) with ；."""
    if all(len(i) <= 10 and "、" not in i and "，" not in i for i in items):
        return "、".join(items)
    return "；".join(items)


def join_or(items: list[str]) -> str:
    return "，或".join(items)


def fmt_weight(kg: float) -> str:
    return str(int(kg)) if kg == int(kg) else f"{kg:.1f}"


def has_danger_sign(text: str) -> bool:
    """Whether a text names one of the danger-sign terms (what the recipes' Rules check in user turns)."""
    return any(term in text for term in T.DANGER_SIGNS)


def make_context(rng, cond: dict, with_sign: bool = False) -> dict:
    """The (fictional) child: age, weight, complaint, duration, and optionally a danger sign the parent reports.

    Complaints that already name a danger-sign term are not used: whether a message carries a danger sign is
    decided here, so that the reply can follow it."""
    age = rng.choice(cond["ages"])
    base = facts.typical_weight(age)
    delta = rng.choice([-1, 0, 0, 1]) if base >= 10 else rng.choice([-0.5, 0, 0, 0.5])
    complaints = [c for c in cond["complaints"] if not has_danger_sign(c)]
    ctx = {"age": age, "weight": base + delta, "complaint": rng.choice(complaints),
           "duration": rng.choice(cond["durations"]), "weight_said": False, "sign": None}
    if with_sign:
        ctx["sign"] = rng.choice(sorted(T.DANGER_SIGNS))
        ctx["sign_phrase"] = rng.choice(T.DANGER_SIGNS[ctx["sign"]])
    return ctx


def with_sign(rng, message: str, ctx: dict) -> str:
    """The parent's message with the danger sign (if any) added at its end, in the parent's words."""
    if not ctx["sign"]:
        return message
    return message + rng.choice(T.DANGER_JOIN).format(sign=ctx["sign_phrase"])


def parent_message(rng, cond: dict, ctx: dict, with_weight: bool) -> str:
    text = rng.choice(T.GREETS) + rng.choice(T.SUBJECTS).format(age=ctx["age"])
    if with_weight:
        text += rng.choice(T.WEIGHTS).format(weight=fmt_weight(ctx["weight"]))
        ctx["weight_said"] = True
    text += rng.choice(T.COMPLAINTS).format(complaint=ctx["complaint"], duration=ctx["duration"])
    return with_sign(rng, text + rng.choice(T.ASKS), ctx)


def fever_dose(rng, cond: dict, ctx: dict) -> str | None:
    """Weight-based antipyretic dose sentence, or None where it does not apply."""
    months = facts.age_months(ctx["age"])
    if not cond["fever"] or months < 2:
        return None
    w = ctx["weight"]
    doses = [T.DOSE_ACET.format(lo=round(w * 10), hi=round(w * 15))]
    if months >= 6 and cond["name"] not in NO_IBUPROFEN:
        doses.append(T.DOSE_IBU.format(lo=round(w * 5), hi=round(w * 10)))
    intro = rng.choice(T.DOSE_INTRO).format(weight=fmt_weight(w))
    if len(doses) == 1:
        return intro + doses[0] + "。按药品说明书的浓度换算成毫升，用自带量具。"
    return intro + "；或".join(doses) + "。" + rng.choice(T.DOSE_TAIL)


def red_flags(cond: dict) -> list[str]:
    return [r for r in cond["red_flags"] if r not in T.DIALOGUE_SKIP_FLAGS]


def _fit(required: list[str], optional: list[str], rng) -> str:
    """Join parts, dropping optional ones (last first) until the reply fits the limits."""
    parts = list(optional)
    while True:
        text = "".join(required[:-1] + parts + required[-1:])
        if len(text) <= MAX_REPLY or not parts:
            break
        parts.pop()
    for filler in rng.sample(T.FILLERS, len(T.FILLERS)):
        if len(text) >= MIN_REPLY:
            break
        text += filler
    return text


def doctor_reply(rng, cond: dict, ctx: dict, careful: bool = True) -> str:
    """The doctor's answer to a parent's first message.

    careful: a danger sign in the message is answered first, with a referral to the emergency department, and
    no folk advice is given. A hurried reply (careful=False, as in scraped consultations) skips the referral and,
    for a fever, gives one piece of forbidden folk advice six times in ten."""
    name = cond["name"]
    assess = T.ASSESS_OVERRIDE.get(name) or T.ASSESS
    head = rng.choice(T.OPENS)
    if careful and ctx.get("sign"):
        head += rng.choice(T.TRIAGE).format(sign=ctx["sign"])
    head += rng.choice(assess).format(name=name)
    if not careful and cond["fever"] and rng.random() < 0.6:
        head += T.FOLK_ADVICE[rng.choice(sorted(T.FOLK_ADVICE))]
    if name in T.NEEDS_VISIT or (cond["fever"] and facts.age_months(ctx["age"]) < 6):
        head += rng.choice(T.VISIT)
    care = rng.choice(T.CARE).format(items="；".join(rng.sample(cond["home_care"], 2)))
    red = rng.choice(T.RED).format(items=join_or(rng.sample(red_flags(cond), 2)))
    optional = [rng.choice(T.TREAT).format(items=main_treatment(rng, cond))]
    dose = fever_dose(rng, cond, ctx) if ctx["weight_said"] else None
    if dose:
        optional.append(dose)
    if rng.random() < 0.5:
        optional.append(rng.choice(T.CLOSES))
    # optional parts go between the care advice and the red flags, dropped last-first if too long
    text = _fit([head, care, red], optional, rng)
    if len(text) > MAX_REPLY:  # still too long: shorter care advice
        care = rng.choice(T.CARE).format(items=cond["home_care"][0])
        text = _fit([head, care, red], optional[:1], rng)
    if dose and dose in text:
        ctx["dose_given"] = True
    return text


def main_treatment(rng, cond: dict) -> str:
    """The first (main) treatment, sometimes with one more."""
    items = cond["treatments"]
    return items[0] if rng.random() < 0.5 else items[0] + "；" + rng.choice(items[1:])


def followup_kinds(cond: dict, ctx: dict) -> list[str]:
    kinds = [k for k in T.FOLLOWUPS if k != "dose"]
    if cond["fever"] and facts.age_months(ctx["age"]) >= 2 and not ctx.get("dose_given"):
        kinds.append("dose")
    return kinds


def followup(rng, cond: dict, ctx: dict, kind: str) -> tuple[str, str]:
    """One follow-up question of the given kind and the doctor's answer."""
    question = rng.choice(T.FOLLOWUPS[kind]).format(weight=fmt_weight(ctx["weight"]))
    opener = rng.choice(T.FOLLOWUP_OPENS)
    if kind == "tests":
        body = rng.choice(T.TESTS_FORMS).format(items=join_items(cond["tests"][:3]))
    elif kind == "meds":
        body = "治疗上，" + main_treatment(rng, cond) + "。"
        if cond["fever"]:
            body += "退烧药按体重计算剂量，两次用药要有间隔，不要与含相同成分的感冒药同用。"
        body += "具体用药请遵医嘱。"
    elif kind == "antibiotic":
        body = cond["antibiotic"]
        if "无效" in body or "不需要" in body:
            body += "家里不要自行给孩子用抗生素，以免带来腹泻、过敏和耐药。"
        else:
            body += "抗生素需要医生开具处方，不要自行增减或提前停药。"
    elif kind == "contagious":
        body = cond["contagious"] + rng.choice(["平时注意勤洗手。", "照护时注意手卫生。", ""])
    elif kind == "course":
        body = cond["course"] + "这期间注意" + rng.choice(cond["home_care"]) + "。"
    elif kind == "care":
        body = "护理上注意：" + "；".join(rng.sample(cond["home_care"], 3)) + "。"
    elif kind == "redflag":
        body = "以下情况要及时就医：" + "；".join(rng.sample(red_flags(cond), 3)) + "。其他时候可以在家观察护理。"
    elif kind == "dose":
        ctx["weight_said"] = True
        body = fever_dose(rng, cond, ctx) or "这个年龄用退烧药需要医生当面评估后再决定。"
        ctx["dose_given"] = True
    else:
        raise ValueError(kind)
    return question, _fit([opener + body], [], rng)


def conversation(rng, cond: dict, turns: int, with_weight: bool, sign: bool = False,
                 careful: bool = True) -> list[tuple[str, str]]:
    """A parent-doctor conversation as (parent, doctor) pairs, first turn first. A danger sign is only put in
    single-turn conversations (the follow-up answers do not repeat the referral)."""
    ctx = make_context(rng, cond, with_sign=sign and turns == 1)
    pairs = [(parent_message(rng, cond, ctx, with_weight), doctor_reply(rng, cond, ctx, careful))]
    kinds = followup_kinds(cond, ctx)
    for kind in rng.sample(kinds, turns - 1):
        pairs.append(followup(rng, cond, ctx, kind))
    return pairs
