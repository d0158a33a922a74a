"""Invariants of the generated sample files; generate.py runs them before writing."""

import facts
import templates as T

MIN_REPLY, MAX_REPLY = 40, 250
MIN_PARA, MAX_PARA = 80, 300


def strings(obj):
    """Every string value inside a row (keys excluded)."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from strings(v)


def check_no_empty(name: str, rows: list[dict]) -> None:
    """No empty strings anywhere, except alpaca 'input', which is "" by design when unused."""
    for i, row in enumerate(rows):
        for s in strings({k: v for k, v in row.items() if k != "input"}):
            assert s.strip(), f"{name} row {i}: empty string"


def check_unique(name: str, rows: list[dict], key) -> None:
    keys = [key(r) for r in rows]
    assert len(set(keys)) == len(keys), f"{name}: duplicate rows"


def check_roles(name: str, i: int, messages: list[dict], final: str) -> None:
    """Optional system first, then user/assistant alternating from user, ending with final."""
    roles = [m["role"] for m in messages]
    if roles and roles[0] == "system":
        roles = roles[1:]
    assert roles, f"{name} row {i}: no turns"
    expected = ["user", "assistant"] * len(roles)
    assert roles == expected[:len(roles)], f"{name} row {i}: roles {roles}"
    assert roles[-1] == final, f"{name} row {i}: ends with {roles[-1]}, want {final}"
    for m in messages:
        assert set(m) == {"role", "content"}, f"{name} row {i}: keys {sorted(m)}"
        if m["role"] == "assistant":
            check_reply(name, i, m["content"])


def check_reply(name: str, i: int, text: str) -> None:
    assert MIN_REPLY <= len(text) <= MAX_REPLY, f"{name} row {i}: reply length {len(text)}"


def turns(messages: list[dict]) -> int:
    return sum(m["role"] == "user" for m in messages)


def check_share(name: str, got: int, total: int, lo: float, hi: float, what: str) -> None:
    share = got / total
    assert lo <= share <= hi, f"{name}: {what} share {share:.2f} outside [{lo}, {hi}]"


def check_all(files: dict[str, list[dict]], counts: dict[str, int]) -> None:
    for name, n in counts.items():
        assert len(files[name]) == n, f"{name}: {len(files[name])} rows, want {n}"
    for name, rows in files.items():
        check_no_empty(name, rows)

    corpus = files["corpus"]
    check_unique("corpus", corpus, lambda r: r["text"])
    for i, r in enumerate(corpus):
        assert set(r) == {"text"} and MIN_PARA <= len(r["text"]) <= MAX_PARA, f"corpus row {i}"

    ins = files["instructions"]
    check_unique("instructions", ins, lambda r: (r["instruction"], r["input"]))
    for i, r in enumerate(ins):
        assert set(r) == {"instruction", "input", "output"}, f"instructions row {i}"
    check_share("instructions", sum(bool(r["input"]) for r in ins), len(ins), 0.2, 0.6, "with input")

    dia = files["dialogues"]
    for i, r in enumerate(dia):
        assert set(r) == {"messages"}, f"dialogues row {i}"
        check_roles("dialogues", i, r["messages"], "assistant")
        assert turns(r["messages"]) <= 3, f"dialogues row {i}: too many turns"
    check_share("dialogues", sum(turns(r["messages"]) == 1 for r in dia), len(dia), 0.75, 0.85, "single-turn")
    check_share("dialogues", sum(r["messages"][0]["role"] == "system" for r in dia), len(dia), 0.25, 0.35,
                "system")

    sg = files["sharegpt"]
    for i, r in enumerate(sg):
        msgs = [{"role": {"human": "user", "gpt": "assistant"}[t["from"]], "content": t["value"]}
                for t in r["conversations"]]
        assert all(set(t) == {"from", "value"} for t in r["conversations"]), f"sharegpt row {i}"
        check_roles("sharegpt", i, msgs, "assistant")
    check_share("sharegpt", sum(len(r["conversations"]) > 2 for r in sg), len(sg), 0.2, 0.6, "multi-turn")

    doc = files["doctor_dialogues"]
    for i, r in enumerate(doc):
        assert set(r) == {"messages", "reference"}, f"doctor_dialogues row {i}"
        check_roles("doctor_dialogues", i, r["messages"], "user")
        check_reply("doctor_dialogues", i, r["reference"])
    check_share("doctor_dialogues", sum(turns(r["messages"]) > 1 for r in doc), len(doc), 0.25, 0.35,
                "with history")

    ver = files["verified_dialogues"]
    for i, r in enumerate(ver):
        assert set(r) == {"messages"}, f"verified_dialogues row {i}"
        check_roles("verified_dialogues", i, r["messages"], "assistant")

    check_danger_signs(files)
    check_exam(files["exam_train"], files["eval_mcq"])

    held = files["heldout_prompts"]
    check_unique("heldout_prompts", held, lambda r: r["prompt"])
    names = {c["name"] for c in facts.CONDITIONS}
    other = "\n".join(s for name, rows in files.items() if name != "heldout_prompts"
                      for row in rows for s in strings(row))
    for i, r in enumerate(held):
        assert set(r) == {"prompt", "reference", "condition", "red_flag"}, f"heldout row {i}"
        assert r["condition"] in names, f"heldout row {i}: unknown condition"
        assert r["prompt"] not in other, f"heldout row {i}: prompt appears in another file"
        check_reply("heldout_prompts", i, r["reference"])

    kb_d, kb_c = files["kb_drugs"], files["kb_diseases"]
    assert [r["drug"] for r in kb_d] == [d["name"] for d in facts.DRUGS], "kb_drugs out of sync"
    for r in kb_c:
        c = facts.CONDITION_BY_NAME[r["disease"]]
        assert (r["symptoms"], r["tests"], r["drugs"]) == (c["symptoms"], c["tests"], c["treatments"])
    assert {r["disease"] for r in kb_c} == names, "kb_diseases out of sync"

    for flag in T.DIALOGUE_SKIP_FLAGS:
        assert any(flag in c["red_flags"] for c in facts.CONDITIONS), f"unknown skip flag {flag}"
    assert set(T.NEEDS_VISIT) <= names, "NEEDS_VISIT names an unknown condition"


def has_sign(text: str) -> bool:
    return any(term in text for term in T.DANGER_SIGNS)


def first_exchanges(files: dict[str, list[dict]]):
    """(file, row, parent's first message, doctor's first reply, careful expected) for every consultation."""
    for name in ("dialogues", "verified_dialogues"):
        for i, r in enumerate(files[name]):
            msgs = [m for m in r["messages"] if m["role"] != "system"]
            yield name, i, msgs[0]["content"], msgs[1]["content"], name == "verified_dialogues"
    for i, r in enumerate(files["sharegpt"]):
        yield "sharegpt", i, r["conversations"][0]["value"], r["conversations"][1]["value"], False
    for i, r in enumerate(files["doctor_dialogues"]):
        msgs = [m for m in r["messages"] if m["role"] != "system"]
        reply = msgs[1]["content"] if len(msgs) > 1 else r["reference"]
        yield "doctor_dialogues", i, msgs[0]["content"], reply, True
    for i, r in enumerate(files["heldout_prompts"]):
        yield "heldout_prompts", i, r["prompt"], r["reference"], True


def check_danger_signs(files: dict[str, list[dict]]) -> None:
    """What the feedback reward relies on: a reply refers to the emergency department (急诊) only when the parent
    reported a danger sign, careful replies always do so then and never give forbidden folk advice, and the
    scraped-style files keep the share of careful replies the generator asked for."""
    referred = {"dialogues": [0, 0], "sharegpt": [0, 0]}
    for name, i, parent, reply, careful in first_exchanges(files):
        sign = has_sign(parent)
        refers = T.REFERRAL_MARK in reply
        assert not refers or sign, f"{name} row {i}: referral without a danger sign"
        if careful:
            assert refers == sign, f"{name} row {i}: careful reply and danger sign disagree"
            assert not any(p in reply for p in T.FOLK_ADVICE), f"{name} row {i}: folk advice in a careful reply"
        if sign and name in referred:
            referred[name][0] += refers
            referred[name][1] += 1
    for name, (hits, total) in referred.items():
        assert total >= 20, f"{name}: only {total} messages with a danger sign"
        check_share(name, hits, total, 0.25, 0.55, "referral for a danger sign")
    # Knowledge text is careful text too; multi-turn prompts never carry a danger sign.
    for name in ("corpus", "instructions", "exam_train", "kb_drugs", "kb_diseases"):
        for i, row in enumerate(files[name]):
            text = "".join(strings(row))
            assert not any(p in text for p in T.FOLK_ADVICE), f"{name} row {i}: forbidden phrase"
            assert T.REFERRAL_MARK not in text, f"{name} row {i}: referral mark outside a consultation"
    for i, r in enumerate(files["doctor_dialogues"]):
        users = [m["content"] for m in r["messages"] if m["role"] == "user"]
        assert len(users) == 1 or not any(has_sign(u) for u in users), f"doctor_dialogues row {i}: sign in history"
        assert has_sign(users[-1]) == (T.REFERRAL_MARK in r["reference"]), f"doctor_dialogues row {i}"
    held = files["heldout_prompts"]
    for i, r in enumerate(held):
        assert r["red_flag"] == has_sign(r["prompt"]), f"heldout row {i}: red_flag disagrees with the prompt"
    check_share("heldout_prompts", sum(r["red_flag"] for r in held), len(held), 0.45, 0.55, "red flag")


def check_exam(train: list[dict], held: list[dict]) -> None:
    """Training questions are distinct and none is a held-out question; answers name their option and letter."""
    prompts = [r["instruction"] for r in train]
    assert len(set(prompts)) == len(prompts), "exam_train: duplicate questions"
    for i, r in enumerate(train):
        assert set(r) == {"instruction", "input", "output"} and r["instruction"].endswith("答案："), f"exam row {i}"
        options = [line[3:] for line in r["instruction"].split("\n")[1:5]]
        named = [o for o in options if o in r["output"]]
        assert len(named) == 1 and r["output"].endswith(named[0] + "。"), f"exam row {i}: names {named}"
    for i, r in enumerate(held):
        assert set(r) == {"question", "options", "answer", "condition"} and len(r["options"]) == 4, f"eval_mcq row {i}"
        assert r["condition"] in r["question"], f"eval_mcq row {i}: condition not in the question"
        assert not any(r["question"] in p and all(o in p for o in r["options"]) for p in prompts), \
            f"eval_mcq row {i} is also a training question"
