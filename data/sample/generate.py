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
          "doctor_dialogues": 200, "heldout_prompts": 60}
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


def conversations(name: str, n: int, multi_share: float, weight_share: float) -> list[list]:
    """n distinct conversations as (parent, doctor) pair lists; multi-turn ones have 2-3 turns."""
    rng = rng_for(name)
    multi, weight, conds = flags(rng, n, multi_share), flags(rng, n, weight_share), spread(rng, n)
    out, seen = [], set()
    for i in range(n):
        for _ in range(50):
            pairs = D.conversation(rng, conds[i], rng.choice([2, 3]) if multi[i] else 1, weight[i])
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


def build_dialogues() -> list[dict]:
    rng = rng_for("dialogues-system")
    system = flags(rng, COUNTS["dialogues"], 0.3)
    rows = []
    for pairs, with_system in zip(conversations("dialogues", COUNTS["dialogues"], 0.4, 0.35), system):
        messages = [{"role": "system", "content": rng.choice(T.SYSTEM_PROMPTS)}] if with_system else []
        for user, assistant in pairs:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        rows.append({"messages": messages})
    return rows


def build_sharegpt() -> list[dict]:
    rows = []
    for pairs in conversations("sharegpt", COUNTS["sharegpt"], 0.4, 0.35):
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


def build_heldout(other_text: str) -> list[dict]:
    """Three prompts per condition, in phrasings no training file uses."""
    rng = rng_for("heldout_prompts")
    per = COUNTS["heldout_prompts"] // len(facts.CONDITIONS)
    rows, seen = [], set()
    for cond in facts.CONDITIONS:
        made = 0
        for _ in range(200):
            ctx = D.make_context(rng, cond)
            prompt = rng.choice(T.HELDOUT_FORMS).format(**ctx)
            if prompt in seen or prompt in other_text:
                continue
            seen.add(prompt)
            rows.append({"prompt": prompt, "reference": D.doctor_reply(rng, cond, ctx),
                         "condition": cond["name"]})
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


def build_eval_mcq() -> list[dict]:
    """Single-answer questions (CMB style): which is a symptom of a condition; the three distractors are
    symptoms of other conditions that this one does not list."""
    rng = rng_for("eval_mcq")
    rows = []
    for cond in facts.CONDITIONS:
        own = set(cond["symptoms"])
        others = sorted({s for c in facts.CONDITIONS if c is not cond for s in c["symptoms"]} - own)
        options = rng.sample(others, 3) + [rng.choice(sorted(own))]
        rng.shuffle(options)
        answer = "ABCD"[next(i for i, o in enumerate(options) if o in own)]
        rows.append({"question": f"以下哪一项是{cond['name']}的常见表现？", "options": options, "answer": answer})
    return rows


def build_eval_kb() -> list[dict]:
    """QiZhen-style hit-rate questions: a drug's indications are the expected items."""
    return [{"question": f"{d['name']}的适应病症是什么？", "items": list(d["indications"])} for d in facts.DRUGS]


def write_jsonl(path: Path, rows: list[dict]) -> int:
    data = "".join(dump(r) + "\n" for r in rows).encode("utf-8")
    assert len(data) < MAX_BYTES, f"{path.name}: {len(data)} bytes, limit {MAX_BYTES}"
    path.write_bytes(data)
    return len(data)


def main() -> None:
    import checks

    files = {"corpus": build_corpus(), "instructions": build_instructions(),
             "dialogues": build_dialogues(), "sharegpt": build_sharegpt(),
             "doctor_dialogues": build_doctor_dialogues()}
    other = "\n".join(s for rows in files.values() for row in rows for s in checks.strings(row))
    files["heldout_prompts"] = build_heldout(other)
    files["kb_drugs"], files["kb_diseases"] = build_kb()
    checks.check_all(files, COUNTS)
    # Evaluation sets (the evaluate stage): not training data, so outside the training-file checks.
    files["eval_mcq"], files["eval_kb"] = build_eval_mcq(), build_eval_kb()
    for name, rows in files.items():
        size = write_jsonl(HERE / f"{name}.jsonl", rows)
        print(f"{name}.jsonl: {len(rows)} rows, {size} bytes")


if __name__ == "__main__":
    main()
