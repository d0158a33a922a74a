"""Compose corpus paragraphs and instruction (alpaca) rows from facts and templates."""

import compose_dialogue as D
import facts
import templates as T

MIN_PARA, MAX_PARA = 80, 300


def _subset(rng, items: list[str], lo: int = 2) -> list[str]:
    """A random subset of at least lo items (all if fewer), kept in the original order."""
    k = rng.randint(min(lo, len(items)), len(items))
    picked = set(rng.sample(range(len(items)), k))
    return [x for i, x in enumerate(items) if i in picked]


def _pad(rng, text: str, pool: list[str], shuffle: bool = True) -> str:
    """Append sentences from pool (not already used) until the paragraph is long enough."""
    for sentence in rng.sample(pool, len(pool)) if shuffle else pool:
        if len(text) >= MIN_PARA:
            break
        if sentence not in text:
            text += sentence
    return text


def _numbered(items: list[str]) -> str:
    return "\n".join(f"{i}. {x}" for i, x in enumerate(items, 1))


def condition_paragraph(rng, c: dict) -> str:
    name, enc = c["name"], c["encyclopedia"]
    aspect = rng.choice(["overview", "symptoms", "tests", "treatments", "care", "red", "course", "mixed"])
    syms = D.join_items(c["symptoms"][:1] + _subset(rng, c["symptoms"][1:], 1))
    if aspect == "overview":
        parts = [enc[0], enc[1], rng.choice(["", f"常见表现有{syms}。"])]
    elif aspect == "symptoms":
        lead = rng.choice([f"{name}的主要表现包括：{syms}。", f"儿童{name}常见的症状有{syms}。"])
        parts = [lead, rng.choice(enc + [c["course"]])]
    elif aspect == "tests":
        tests = D.join_items(c["tests"][:1] + _subset(rng, c["tests"][1:], 0))
        parts = [enc[0], f"诊断{name}时，医生通常先询问病史并查体，常用检查包括：{tests}。",
                 rng.choice(["", "具体检查项目应由医生根据病情选择。"])]
    elif aspect == "treatments":
        treat = "；".join(_subset(rng, c["treatments"]))
        parts = [rng.choice([f"{name}的治疗要点：{treat}。", f"儿童{name}的处理原则是{treat}。"]),
                 c["antibiotic"], rng.choice(["", "用药剂量应遵医嘱。"])]
    elif aspect == "care":
        care = "；".join(_subset(rng, c["home_care"]))
        parts = [rng.choice([f"{name}患儿的家庭护理要点：{care}。", f"孩子患{name}时，家庭护理应做到：{care}。"]),
                 rng.choice([c["contagious"], enc[1]])]
    elif aspect == "red":
        rfs = "；".join(_subset(rng, c["red_flags"]))
        parts = [rng.choice(enc), f"{name}患儿出现以下情况时应及时就医：{rfs}。"]
    elif aspect == "course":
        parts = [c["course"], c["contagious"], rng.choice(enc)]
    else:
        care = "；".join(_subset(rng, c["home_care"], 1)[:2])
        rf = D.join_or(_subset(rng, c["red_flags"], 1)[:2])
        parts = [enc[0], f"常见表现有{syms}。", f"家庭护理要点：{care}。", f"如出现{rf}，需及时就医。"]
    pool = [enc[0], enc[1], c["course"], c["contagious"], c["antibiotic"]]
    return _pad(rng, "".join(parts), pool)


def drug_paragraph(rng, d: dict) -> str:
    name, inds = d["name"], D.join_items(d["indications"])
    cautions = "；".join(_subset(rng, d["cautions"].rstrip("。").split("；"), 1))
    lead = rng.choice([f"{name}属于{d['category']}，儿童主要用于{inds}。",
                       f"{name}是一种{d['category']}，适用于{inds}。",
                       f"在儿科，{name}常用于{inds}。"])
    parts = [lead, rng.choice([d["dosage"], ""]), rng.choice(["使用时注意：", "注意事项："]) + cautions + "。"]
    pool = [d["dosage"], "具体用法用量请遵医嘱或药品说明书。", "用药前请核对药名、规格和孩子的体重。"]
    return _pad(rng, "".join(parts), pool, shuffle=False)


def general_paragraph(rng) -> str:
    a, b = rng.sample(T_GENERAL_INDEX, 2)
    return facts.GENERAL[a] + facts.GENERAL[b]


T_GENERAL_INDEX = list(range(len(facts.GENERAL)))


def corpus_paragraph(rng) -> str:
    r = rng.random()
    if r < 0.7:
        return condition_paragraph(rng, rng.choice(facts.CONDITIONS))
    if r < 0.9:
        return drug_paragraph(rng, rng.choice(facts.DRUGS))
    return general_paragraph(rng)


def condition_answer(rng, c: dict, kind: str) -> str:
    name, enc = c["name"], c["encyclopedia"]
    if kind == "symptoms":
        return f"儿童{name}的常见表现包括：\n{_numbered(c['symptoms'])}\n{rng.choice(enc)}"
    if kind == "tests":
        return (f"怀疑{name}时，医生会先询问病史并查体，常用的检查有：\n{_numbered(c['tests'])}\n"
                "具体做哪些检查由医生根据病情决定。")
    if kind == "treatments":
        return f"{name}的治疗要点：\n{_numbered(c['treatments'])}\n{c['antibiotic']}具体用药请遵医嘱。"
    if kind == "home_care":
        rf = D.join_or(rng.sample(c["red_flags"], 2))
        return f"{name}的家庭护理要点：\n{_numbered(c['home_care'])}\n如果出现{rf}等情况，应及时就医。"
    if kind == "red_flags":
        return f"孩子患{name}期间，出现以下情况应及时就医：\n{_numbered(c['red_flags'])}\n{c['course']}"
    if kind == "overview":
        return f"{enc[0]}{enc[1]}常见表现有{D.join_items(c['symptoms'][:3])}。"
    if kind == "contagious":
        return c["contagious"] + rng.choice(["", c["course"]]) + "家庭成员照护时注意勤洗手。"
    if kind == "course":
        return c["course"] + rng.choice(enc) + "如果病程明显超出预期，应及时复诊。"
    if kind == "antibiotic":
        return c["antibiotic"] + "是否使用抗生素应由医生判断，一旦使用要按疗程服用，不要自行停药。"
    raise ValueError(kind)


def drug_answer(d: dict, kind: str) -> str:
    if kind == "indications":
        return f"{d['name']}属于{d['category']}，儿童主要用于：\n{_numbered(d['indications'])}\n请在医生或药师指导下使用。"
    if kind == "cautions":
        items = d["cautions"].rstrip("。").split("；")
        return f"{d['name']}给儿童使用时要注意：\n{_numbered(items)}\n用药前请仔细阅读说明书。"
    if kind == "dosage":
        return f"{d['name']}的儿童用法：{d['dosage']}具体剂量请以药品说明书和医生医嘱为准。"
    raise ValueError(kind)


def child_input(rng, c: dict, ctx: dict, with_weight: bool) -> str:
    w = f"体重{D.fmt_weight(ctx['weight'])}公斤，" if with_weight else ""
    return f"孩子{ctx['age']}，{w}{ctx['complaint']}，持续{ctx['duration']}。"


def instruction_row(rng) -> dict:
    """One alpaca row: knowledge Q&A, a drug question, a case or a dose question."""
    r = rng.random()
    c = rng.choice(facts.CONDITIONS)
    if r < 0.65:
        kind = rng.choice(list(T.CONDITION_QUESTIONS))
        question = rng.choice(T.CONDITION_QUESTIONS[kind]).format(name=c["name"])
        answer = condition_answer(rng, c, kind)
        if r < 0.45:
            return {"instruction": question, "input": "", "output": answer}
        ctx = D.make_context(rng, c)
        return {"instruction": question, "input": child_input(rng, c, ctx, False),
                "output": f"结合孩子{ctx['age']}的情况，" + answer}
    if r < 0.8:
        d = rng.choice(facts.DRUGS)
        kind = rng.choice(list(T.DRUG_QUESTIONS))
        question = rng.choice(T.DRUG_QUESTIONS[kind]).format(drug=d["name"])
        return {"instruction": question, "input": "", "output": drug_answer(d, kind)}
    ctx = D.make_context(rng, c)
    if r < 0.9 or not c["fever"] or D.facts.age_months(ctx["age"]) < 2:
        ctx["weight_said"] = False
        return {"instruction": rng.choice(T.CASE_QUESTIONS), "input": child_input(rng, c, ctx, False),
                "output": D.doctor_reply(rng, c, ctx)}
    ctx["weight_said"] = True
    answer = D.fever_dose(rng, c, ctx) + "退烧的目的是让孩子舒服，精神好转即可，不必追求体温降到正常。"
    return {"instruction": rng.choice(T.DOSE_QUESTIONS), "input": child_input(rng, c, ctx, True),
            "output": answer}
