"""Regenerate the rlmed sample data: python data/sample/generate.py (from the repo root).

Every row is composed from the hand-written facts (facts*.py) and phrasings
(templates.py) with seeded random generators, so the output is fictional and
byte-identical on every run. The script checks its own invariants and fails
loudly if an edit breaks them. Standard library only.
"""

import sys

sys.dont_write_bytecode = True  # keep data/sample free of __pycache__

import json  # noqa: E402
import random  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import compose_dialogue as D  # noqa: E402
import compose_text as X  # noqa: E402
import facts  # noqa: E402
import templates as T  # noqa: E402

SEED = 20240601
COUNTS = {"corpus": 600, "instructions": 500, "dialogues": 400, "sharegpt": 150,
          "doctor_dialogues": 400, "verified_dialogues": 240, "heldout_prompts": 100, "exam_train": 800}
# Shares of single-turn first messages that report a danger sign, per file.
SIGN_SHARE = {"dialogues": 0.5, "sharegpt": 0.5, "doctor_dialogues": 0.7, "verified_dialogues": 0.4,
              "heldout_prompts": 0.5}
# Share of careful replies in the scraped-style SFT files (the rest are hurried: no referral for a danger
# sign, folk advice for a fever). Doctor dialogues, verified dialogues and held-out references are all careful.
CAREFUL_SHARE = 0.4
MAX_BYTES = 400_000


def rng_for(name: str) -> random.Random:
    """One generator per file, so editing one file's recipe leaves the others unchanged."""
    return random.Random(f"{SEED}:{name}")


def dump(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False)


def unique_rows(make, n: int, what: str) -> list[dict]:
    """Call make() until n distinct rows exist; fail if the templates cannot supply them."""
    rows, seen = [], set()
    for _ in range(n * 50):
        row = make()
        key = dump(row)
        if key not in seen:
            seen.add(key)
            rows.append(row)
            if len(rows) == n:
                return rows
    raise AssertionError(f"{what}: only {len(rows)} distinct rows, wanted {n}")


def flags(rng, n: int, share: float) -> list[bool]:
    """Exactly round(n * share) True values, in shuffled order."""
    k = round(n * share)
    out = [True] * k + [False] * (n - k)
    rng.shuffle(out)
    return out


def spread(rng, n: int) -> list[dict]:
    """n conditions, each used as evenly as possible, in shuffled order."""
    out = [facts.CONDITIONS[i % len(facts.CONDITIONS)] for i in range(n)]
    rng.shuffle(out)
    return out


def conversations(name: str, n: int, multi_share: float, weight_share: float,
                  careful_share: float = 1.0) -> list[list]:
    """n distinct conversations as (parent, doctor) pair lists; multi-turn ones have 2-3 turns. SIGN_SHARE[name]
    of the single-turn ones report a danger sign; careful_share of the replies are careful."""
    rng = rng_for(name)
    multi, weight, conds = flags(rng, n, multi_share), flags(rng, n, weight_share), spread(rng, n)
    single = [i for i in range(n) if not multi[i]]
    signed = {i for i, s in zip(single, flags(rng, len(single), SIGN_SHARE[name])) if s}
    careful = flags(rng, n, careful_share)
    out, seen = [], set()
    for i in range(n):
        for _ in range(50):
            pairs = D.conversation(rng, conds[i], rng.choice([2, 3]) if multi[i] else 1, weight[i],
                                   sign=i in signed, careful=careful[i])
            if pairs[0][0] not in seen:
                break
        else:
            raise AssertionError(f"{name}: cannot find a new first message")
        seen.add(pairs[0][0])
        out.append(pairs)
    return out


def build_corpus() -> list[dict]:
    rng = rng_for("corpus")
    return unique_rows(lambda: {"text": X.corpus_paragraph(rng)}, COUNTS["corpus"], "corpus")


def build_instructions() -> list[dict]:
    rng = rng_for("instructions")
    rows, seen = [], set()
    for _ in range(COUNTS["instructions"] * 50):
        row = X.instruction_row(rng)
        key = (row["instruction"], row["input"])
        if key not in seen:
            seen.add(key)
            rows.append(row)
            if len(rows) == COUNTS["instructions"]:
                return rows
    raise AssertionError(f"instructions: only {len(rows)} distinct questions")


def message_dialogues(name: str, system_share: float, multi_share: float, careful_share: float = 1.0
                      ) -> list[dict]:
    """Whole dialogues in `messages` form, system_share of them opening with a system message."""
    rng = rng_for(f"{name}-system")
    system = flags(rng, COUNTS[name], system_share)
    rows = []
    for pairs, with_system in zip(conversations(name, COUNTS[name], multi_share, 0.35, careful_share), system):
        messages = [{"role": "system", "content": rng.choice(T.SYSTEM_PROMPTS)}] if with_system else []
        for user, assistant in pairs:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        rows.append({"messages": messages})
    return rows


def build_dialogues() -> list[dict]:
    return message_dialogues("dialogues", 0.3, 0.2, CAREFUL_SHARE)


def build_sharegpt() -> list[dict]:
    rows = []
    for pairs in conversations("sharegpt", COUNTS["sharegpt"], 0.4, 0.35, CAREFUL_SHARE):
        turns = []
        for human, gpt in pairs:
            turns += [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]
        rows.append({"conversations": turns})
    return rows


def build_doctor_dialogues() -> list[dict]:
    rng = rng_for("doctor_dialogues-system")
    system = flags(rng, COUNTS["doctor_dialogues"], 0.2)
    rows = []
    for pairs, with_system in zip(conversations("doctor_dialogues", COUNTS["doctor_dialogues"], 0.3, 0.35),
                                  system):
        messages = [{"role": "system", "content": rng.choice(T.SYSTEM_PROMPTS)}] if with_system else []
        for user, assistant in pairs[:-1]:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        messages.append({"role": "user", "content": pairs[-1][0]})
        rows.append({"messages": messages, "reference": pairs[-1][1]})
    return rows


def build_verified_dialogues() -> list[dict]:
    """Whole dialogues answered by careful doctors (the mole stage's consultation task)."""
    return message_dialogues("verified_dialogues", 0.2, 0.3)


def build_heldout(other_text: str) -> list[dict]:
    """Five prompts per condition, in phrasings no training file uses; SIGN_SHARE of them report a danger sign
    (`red_flag`), spread evenly over the conditions."""
    rng = rng_for("heldout_prompts")
    per = COUNTS["heldout_prompts"] // len(facts.CONDITIONS)
    signed = flags(rng, COUNTS["heldout_prompts"], SIGN_SHARE["heldout_prompts"])
    rows, seen = [], set()
    for cond in facts.CONDITIONS:
        made = 0
        for _ in range(200):
            ctx = D.make_context(rng, cond, with_sign=signed[len(rows)])
            form = rng.choice(T.HELDOUT_FORMS)
            prompt = D.with_sign(rng, form.format(**ctx), ctx)
            if prompt in seen or prompt in other_text:
                continue
            seen.add(prompt)
            rows.append({"prompt": prompt, "reference": D.doctor_reply(rng, cond, ctx),
                         "condition": cond["name"], "red_flag": bool(ctx["sign"])})
            made += 1
            if made == per:
                break
        assert made == per, f"heldout: only {made} prompts for {cond['name']}"
    return rows


def build_kb() -> tuple[list[dict], list[dict]]:
    drugs = [{"drug": d["name"], "indications": list(d["indications"]), "cautions": d["cautions"]}
             for d in facts.DRUGS]
    diseases = [{"disease": c["name"], "symptoms": list(c["symptoms"]), "tests": list(c["tests"]),
                 "drugs": list(c["treatments"])} for c in facts.CONDITIONS]
    return drugs, diseases


def choice_prompt(question: str, options: list[str]) -> str:
    """The question as the evaluate stage renders it zero-shot (rlmed.eval.choice.zero_shot_prompt; a test keeps
    the two in step)."""
    lines = [f"{letter}. {text}" for letter, text in zip("ABCD", options)]
    return question + "\n" + "\n".join(lines) + "\n答案："


def mcq_item(rng, cond: dict, field: str, stems: list[str]) -> dict:
    """One single-answer question: the right option from the condition's `field` list, three distractors from
    other conditions' lists that this condition does not have. No option contains another (an answer naming
    "可伴发热" must not also name "发热")."""
    own = set(cond[field])
    # A distractor that contains the condition's name, or is inside it, would be read as the answer too.
    others = sorted({s for c in facts.CONDITIONS if c is not cond for s in c[field]
                     if cond["name"] not in s and s not in cond["name"]} - own)
    while True:
        options = rng.sample(others, 3) + [rng.choice(sorted(own))]
        if not any(a != b and a in b for a in options for b in options):
            break
    rng.shuffle(options)
    letter = "ABCD"[next(i for i, o in enumerate(options) if o in own)]
    return {"question": rng.choice(stems).format(name=cond["name"]), "options": options, "answer": letter,
            "condition": cond["name"]}


def build_eval_mcq() -> list[dict]:
    """Two symptom questions per condition (CMB style), held out from exam_train.jsonl."""
    rng = rng_for("eval_mcq")
    rows, seen = [], set()
    for cond in facts.CONDITIONS:
        while sum(r["condition"] == cond["name"] for r in rows) < 2:
            row = mcq_item(rng, cond, "symptoms", T.MCQ_SYMPTOM_STEMS)
            if frozenset(row["options"]) not in seen:
                seen.add(frozenset(row["options"]))
                rows.append(row)
    return rows


def build_exam_train(held: list[dict]) -> list[dict]:
    """Multiple-choice questions on the conditions' symptoms, with answers, in the evaluate stage's layout, so
    SFT learns the answer format and the knowledge behind it. None shares more than two options with a held-out
    question of its condition."""
    rng = rng_for("exam_train")
    held_sets = [(r["condition"], set(r["options"])) for r in held]
    rows, seen = [], set()
    for _ in range(COUNTS["exam_train"] * 50):
        cond = rng.choice(facts.CONDITIONS)
        item = mcq_item(rng, cond, "symptoms", T.MCQ_SYMPTOM_STEMS)
        options = set(item["options"])
        if any(c == cond["name"] and len(options & h) > 2 for c, h in held_sets):
            continue
        prompt = choice_prompt(item["question"], item["options"])
        if prompt in seen:
            continue
        seen.add(prompt)
        text = item["options"]["ABCD".index(item["answer"])]
        rows.append({"instruction": prompt, "input": "", "output": T.MCQ_ANSWER.format(name=cond["name"], text=text)})
        if len(rows) == COUNTS["exam_train"]:
            return rows
    raise AssertionError(f"exam_train: only {len(rows)} distinct questions")


def build_eval_kb() -> list[dict]:
    """QiZhen-style hit-rate questions in phrasings no training file uses: a drug's indications, a condition's
    symptoms."""
    drugs = [{"question": T.EVAL_DRUG_QUESTION.format(drug=d["name"]), "items": list(d["indications"])}
             for d in facts.DRUGS]
    diseases = [{"question": T.EVAL_DISEASE_QUESTION.format(disease=c["name"]), "items": list(c["symptoms"])}
                for c in facts.CONDITIONS]
    return drugs + diseases


def write_jsonl(path: Path, rows: list[dict]) -> int:
    data = "".join(dump(r) + "\n" for r in rows).encode("utf-8")
    assert len(data) < MAX_BYTES, f"{path.name}: {len(data)} bytes, limit {MAX_BYTES}"
    path.write_bytes(data)
    return len(data)


def main() -> None:
    import checks

    eval_mcq = build_eval_mcq()
    files = {"corpus": build_corpus(), "instructions": build_instructions(),
             "dialogues": build_dialogues(), "sharegpt": build_sharegpt(),
             "doctor_dialogues": build_doctor_dialogues(), "verified_dialogues": build_verified_dialogues(),
             "exam_train": build_exam_train(eval_mcq)}
    other = "\n".join(s for rows in files.values() for row in rows for s in checks.strings(row))
    files["heldout_prompts"] = build_heldout(other)
    files["kb_drugs"], files["kb_diseases"] = build_kb()
    # Evaluation sets (the evaluate stage) besides the held-out prompts.
    files["eval_mcq"] = eval_mcq
    files["eval_kb"] = build_eval_kb()
    checks.check_all(files, COUNTS)
    for name, rows in files.items():
        size = write_jsonl(HERE / f"{name}.jsonl", rows)
        print(f"{name}.jsonl: {len(rows)} rows, {size} bytes")


if __name__ == "__main__":
    main()
