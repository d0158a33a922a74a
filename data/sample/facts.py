"""All hand-written facts for the sample data, gathered and checked.

Condition fields: name, ages, durations, complaints (parent's words), symptoms,
tests, treatments, home_care, red_flags (lists of short phrases), encyclopedia
(two sentences), contagious, course, antibiotic (one sentence each) and fever
(whether fever-medicine advice applies). Drug fields: name, category,
indications, dosage, cautions. GENERAL holds general guidance paragraphs.
"""

import re

from facts_a import CONDITIONS_A
from facts_b import CONDITIONS_B
from facts_drugs import DRUGS, GENERAL

CONDITIONS = CONDITIONS_A + CONDITIONS_B
CONDITION_BY_NAME = {c["name"]: c for c in CONDITIONS}
DRUG_BY_NAME = {d["name"]: d for d in DRUGS}

LIST_FIELDS = ("ages", "durations", "complaints", "symptoms", "tests", "treatments",
               "home_care", "red_flags", "encyclopedia")
TEXT_FIELDS = ("name", "contagious", "course", "antibiotic")
DRUG_TEXT_FIELDS = ("name", "category", "dosage", "cautions")

# Typical body weight (kg, rounded) used when a parent's message states a weight.
_WEIGHT_BY_MONTHS = [(0.5, 3.5), (1, 4.5), (2, 5.5), (3, 6.5), (4, 7), (6, 7.5), (8, 8.5), (10, 9), (12, 10),
                     (18, 11), (24, 12), (36, 14), (48, 16), (60, 18), (72, 20), (84, 22),
                     (96, 25), (120, 30)]


def age_months(age: str) -> float:
    """Age in months from strings such as 出生5天, 3周, 8个月, 1岁半, 5岁."""
    if m := re.fullmatch(r"出生(\d+)天", age):
        return int(m.group(1)) / 30
    if age == "出生半个月":
        return 0.5
    if m := re.fullmatch(r"(?:出生)?(\d+)周", age):
        return int(m.group(1)) / 4.3
    if m := re.fullmatch(r"(\d+)个月", age):
        return float(m.group(1))
    if m := re.fullmatch(r"(\d+)岁(半?)", age):
        return int(m.group(1)) * 12 + (6 if m.group(2) else 0)
    raise ValueError(f"cannot parse age {age!r}")


def typical_weight(age: str) -> float:
    """A plausible weight in kg for an age: the table entry at or just above it."""
    months = age_months(age)
    for limit, kg in _WEIGHT_BY_MONTHS:
        if months <= limit:
            return kg
    return _WEIGHT_BY_MONTHS[-1][1]


def check_facts() -> None:
    """Fail loudly if a hand edit broke the shape of the facts."""
    assert len(CONDITIONS) == 20, len(CONDITIONS)
    assert len(CONDITION_BY_NAME) == len(CONDITIONS), "duplicate condition names"
    assert len(DRUG_BY_NAME) == len(DRUGS), "duplicate drug names"
    for c in CONDITIONS:
        for key in LIST_FIELDS:
            values = c[key]
            assert isinstance(values, list) and values, (c["name"], key)
            assert all(isinstance(v, str) and v.strip() for v in values), (c["name"], key)
            assert len(set(values)) == len(values), (c["name"], key, "duplicates")
        for key in TEXT_FIELDS:
            assert isinstance(c[key], str) and c[key].strip(), (c["name"], key)
        assert len(c["encyclopedia"]) == 2, c["name"]
        assert all(s.endswith("。") for s in c["encyclopedia"]), c["name"]
        assert isinstance(c["fever"], bool), c["name"]
        for age in c["ages"]:
            age_months(age)
    for d in DRUGS:
        for key in DRUG_TEXT_FIELDS:
            assert isinstance(d[key], str) and d[key].strip(), (d["name"], key)
        assert d["indications"] and all(i.strip() for i in d["indications"]), d["name"]
    assert all(g.strip() for g in GENERAL)


check_facts()
