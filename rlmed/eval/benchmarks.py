"""Public medical benchmarks read in their own field layouts, and prompted in each one's customary layout.

The evaluate stage reads an eval set as one of these when its data source says `format: <name>`, or when its first
row's columns match one layout (`detect_benchmark`); every row is then converted here into what evaluate scores:

- choice (`ChoiceItem`: question, option texts lettered A.., the gold letters, whether several are correct):
  - cmb_exam: CMB-Exam rows {exam_type, exam_class, exam_subject, question, question_type, option: {"A": ...},
    answer}; 多项选择题 (or a gold answer of several letters) is a multiple-answer question, scored by exact set
    match. CMB-test ships without answers: merge CMB-test-choice-answer.json into the rows by id first.
  - cmexam: CMExam rows {Question, Options: "A 选项一\\nB 选项二...", Answer: "B" or "ABD", Explanation, Disease
    Group, Clinical Department, Medical Discipline, Competency, Difficulty level}.
  - medqa: MedQA rows {question, options: {"A": ...} (or bigbio's [{key, value}]), answer_idx, answer, meta_info};
    the Chinese MCMLE questions get a Chinese prompt, the USMLE ones (4 or 5 options) an English one.
  - cmmlu: a CMMLU subject CSV (",Question,A,B,C,D,Answer", the first column pandas' unnamed index); the subject is
    the file name (clinical_knowledge.csv) or a `subject` column, named in Chinese as CMMLU's prompt does.
  - meds_bench: MedS-Bench multiple-choice tasks, MedS-Ins' layout: a task file {"Definition": [...],
    "Instances": [{input, output}]} or rows {instruction, input, output}; the options are read from the input
    text ("A: ...\\tB: ..." or "A. ...\\nB. ..."), the gold letter from the output ("The right answer is B: ...").
- generation (`Conversation`: messages, reference, what the reward source needs):
  - healthbench: HealthBench rows {prompt: [messages], rubrics: [{criterion, points, tags}], prompt_id,
    example_tags}; the conversation is answered, and the stage's `reward:` source grades it with the row's
    rubrics (Sample.metadata["rubrics"], ["prompt_id"]); rlmed.eval.benchmark_scores gives HealthBench's scores.
  - cmb_clin: CMB-Clin cases {id, title, description, QA_pairs: [{question, solution}]}: one row per question,
    asked after the case description and the earlier questions with their reference solutions (CMB's own
    multi-turn layout), judged against its solution.

Prompts follow each benchmark's own evaluation code: CMB's query ("以下是中国{exam_type}中{exam_class}考试的一道
{question_type}，不需要做任何分析和解释，直接输出答案选项。") with few-shot cases as earlier chat turns answered "答案是X。";
CMMLU's ("以下是关于{subject}的单项选择题，请直接给出正确答案的选项。" then "题目：...答案是：" blocks); CMExam's repository
template ("问题: ...\\n选项: ..." → "答案: X") after one instruction line; MedQA in MMLU's layout ("The following are
multiple choice questions (with answers) about medicine." then "Question: ...\\nAnswer:"; the Chinese questions
"问题：...答案："); MedS-Bench's instruction and input, with few-shot cases in MedS-Ins' case template.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from rlmed.data.records import DataError, Record
from rlmed.data.rubric_rows import row_messages, row_rubric_metadata
from rlmed.eval.choice import format_options, gold_letters, meds_ins_prompt

CHOICE_FORMATS = ("cmb_exam", "cmexam", "medqa", "cmmlu", "meds_bench")
GENERATION_FORMATS = ("healthbench", "cmb_clin")
BENCHMARK_FORMATS = CHOICE_FORMATS + GENERATION_FORMATS
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

# CMMLU's Chinese names of its medical (and medicine-adjacent) subjects, from its own categories.py; a subject not
# listed is named by its file name.
CMMLU_SUBJECTS = {
    "anatomy": "解剖学", "clinical_knowledge": "临床知识", "college_medical_statistics": "大学医学统计",
    "college_medicine": "大学医学", "genetics": "遗传学", "nutrition": "营养学", "professional_medicine": "专业医学",
    "traditional_chinese_medicine": "中医中药", "virology": "病毒学", "food_science": "食品科学",
    "human_sexuality": "人类性行为", "high_school_biology": "高中生物", "sports_science": "体育学",
}
CMEXAM_FIELDS = ("Disease Group", "Clinical Department", "Medical Discipline", "Competency", "Difficulty level")
_CJK = re.compile(r"[\u4e00-\u9fff]")


@dataclass
class ChoiceItem:
    """One multiple-choice question: option texts lettered A.. in order, the gold letters (sorted, "D" or
    "ACD"), whether it is a multiple-answer question, and the layout's other fields its prompt uses."""

    question: str
    options: list[str]
    answer: str
    multiple: bool = False
    fields: dict[str, Any] = field(default_factory=dict)

    def as_row(self) -> dict[str, Any]:
        """The fields a loglik continuation template may name ({question}, {exam_subject}, ...)."""
        return {**self.fields, "question": self.question, "options": self.options, "answer": self.answer}


@dataclass
class Conversation:
    """One generation row: the messages to answer, the reference (None: graded by rubrics), what the reward
    source reads besides the answer (`metadata`), and tags saved with the row."""

    messages: list[dict[str, str]]
    reference: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, Any] = field(default_factory=dict)


# --- reading files the general reader cannot ----------------------------------------------------------------------
def read_benchmark_file(path: str) -> tuple[list[Record], str | None] | None:
    """Rows of a benchmark file whose container rlmed.data.records does not read, and the benchmark they are in
    (None: unknown); None for any other file. A CSV whose first header cell is empty (pandas' index column, as in
    CMMLU's files: dropped; the layout detected from the columns), or a MedS-Bench task file (one JSON object with
    "Definition" and "Instances": one row per instance, numbered in place of a line)."""
    p = Path(path)
    if not p.is_file() or p.suffix.lower() not in (".csv", ".json"):
        return None
    with p.open("rb") as f:  # a look at the start decides; other files are left to the general reader unread
        head = f.read(4096).lstrip(b"\xef\xbb\xbf").lstrip(b" \t\r\n" if p.suffix.lower() == ".json" else b"")
    if not head.startswith(b"," if p.suffix.lower() == ".csv" else b"{"):
        return None
    text = _decode(p).lstrip("\ufeff")
    if p.suffix.lower() == ".csv":
        from rlmed.data.tables import read_delimited

        rows = read_delimited(str(p), "_index" + text, ",")
        for row in rows:
            if isinstance(row, DataError):
                raise row
        found = [Record(r.path, r.line, {k: v for k, v in r.row.items() if k != "_index"}) for r in rows]
        return found, detect_benchmark(found[0].row) if found else None  # an index column alone says no layout
    try:
        task = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(str(p), exc.lineno, f"invalid JSON: {exc.msg}") from None
    if not isinstance(task, dict) or not isinstance(task.get("Instances"), list):
        return None
    definition = task.get("Definition")
    instruction = definition[0] if isinstance(definition, list) and definition else definition
    return [Record(str(p), i, {"instruction": instruction, **inst} if isinstance(inst, dict) else {"_bad": inst})
            for i, inst in enumerate(task["Instances"], start=1)], "meds_bench"


def _decode(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError as exc:
        raise DataError(str(path), None, f"file is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None


def detect_benchmark(row: dict[str, Any]) -> str | None:
    """The benchmark whose layout a row's columns match, or None. Only unambiguous column sets count: rows of
    {instruction, input, output} are Alpaca rows unless `format: meds_bench` says otherwise."""
    keys = set(row)
    if "rubrics" in keys and isinstance(row.get("prompt"), list):
        return "healthbench"
    if "QA_pairs" in keys:
        return "cmb_clin"
    if {"question", "option"} <= keys:
        return "cmb_exam"
    if {"question", "options", "answer_idx"} <= keys:
        return "medqa"
    if {"Question", "Options", "Answer"} <= keys:
        return "cmexam"
    if {"Question", "A", "B", "Answer"} <= keys:
        return "cmmlu"
    return None


# --- conversion ----------------------------------------------------------------------------------------------------
def _string(record: Record, key: str, *aliases: str) -> str:
    for name in (key, *aliases):
        value = record.row.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str) and value.strip():
            return value.strip()
    names = " or ".join(f"'{k}'" for k in (key, *aliases))
    raise record.error(f"missing field {names} (a non-empty string)")


def _lettered(record: Record, options: dict[str, Any], where: str) -> list[str]:
    """Option texts in letter order from {"A": text, ...}: empty trailing options dropped (CMB pads to E), the
    letters consecutive from A."""
    found = {str(k).strip().upper(): "" if v is None else str(v).strip() for k, v in options.items()}
    letters = sorted(found)
    while letters and not found[letters[-1]]:
        letters.pop()
    if len(letters) < 2 or "".join(letters) != LETTERS[:len(letters)]:
        raise record.error(f"{where}: expected options lettered A, B, ... in order, got {sorted(found)}")
    return [found[k] for k in letters]


def _answer(record: Record, raw: Any, options: list[str], multiple: bool) -> str:
    if raw is None or not str(raw).strip():
        raise record.error("no answer: the question cannot be scored (CMB-test ships without answers: merge "
                           "CMB-test-choice-answer.json into the rows by id)")
    try:
        letters = gold_letters(str(raw), options, "answer")
    except ValueError as exc:
        raise record.error(str(exc)) from None
    if not multiple and len(letters) > 1:
        raise record.error(f"answer {raw!r} names several letters for a single-answer question")
    return letters


def _cmb_exam(record: Record) -> ChoiceItem:
    row = record.row
    option = row.get("option")
    if isinstance(option, str):  # the Hub loader's copy keeps the options as a JSON string
        try:
            option = json.loads(option)
        except json.JSONDecodeError:
            pass
    if not isinstance(option, dict):
        raise record.error(f"'option' should be an object {{\"A\": text, ...}}, got {type(option).__name__}")
    options = _lettered(record, option, "'option'")
    qtype = str(row.get("question_type") or "").strip()
    raw = row.get("answer")
    several = len(re.sub(r"[\s、,，]+", "", str(raw or ""))) > 1
    multiple = qtype == "多项选择题" or several
    fields = {k: str(row[k]).strip() for k in ("exam_type", "exam_class", "exam_subject") if row.get(k)}
    fields["question_type"] = qtype or ("多项选择题" if multiple else "单项选择题")
    return ChoiceItem(_string(record, "question"), options, _answer(record, raw, options, multiple), multiple,
                      fields)


_CMEXAM_OPTION = re.compile(r"^\s*([A-Za-z])(?:\s*[.．、:：)）]\s*|\s+)(.*)$")


def _cmexam(record: Record) -> ChoiceItem:
    text = _string(record, "Options")
    options: dict[str, str] = {}
    for line in (x for x in text.split("\n") if x.strip()):
        m = _CMEXAM_OPTION.match(line)
        if not m:
            raise record.error(f"'Options': cannot read the line {line.strip()!r} as \"<letter> <option text>\"")
        options[m.group(1).upper()] = m.group(2).strip()
    lettered = _lettered(record, options, "'Options'")
    raw = _string(record, "Answer")
    multiple = len(re.sub(r"[\s、,，]+", "", raw)) > 1
    fields = {k: str(record.row[k]).strip() for k in CMEXAM_FIELDS if record.row.get(k)}
    return ChoiceItem(_string(record, "Question"), lettered, _answer(record, raw, lettered, multiple), multiple,
                      fields)


def _medqa(record: Record) -> ChoiceItem:
    row = record.row
    raw = row.get("options")
    if isinstance(raw, list):  # bigbio/med_qa's source schema: [{"key": "A", "value": ...}, ...]
        if not all(isinstance(o, dict) and "key" in o and "value" in o for o in raw):
            raise record.error("'options' as a list should hold {key, value} objects")
        raw = {o["key"]: o["value"] for o in raw}
    if not isinstance(raw, dict):
        raise record.error(f"'options' should be an object {{\"A\": text, ...}}, got {type(raw).__name__}")
    options = _lettered(record, raw, "'options'")
    answer = row.get("answer_idx")
    if not answer and isinstance(row.get("answer"), str):  # the answer text alone: find its option
        answer = next((LETTERS[i] for i, o in enumerate(options) if o == row["answer"].strip()), None)
    question = _string(record, "question")
    fields = {"language": "zh" if _CJK.search(question) else "en"}
    if row.get("meta_info"):
        fields["meta_info"] = str(row["meta_info"])
    return ChoiceItem(question, options, _answer(record, answer, options, False), False, fields)


def _cmmlu(record: Record) -> ChoiceItem:
    row = {str(k).strip().lower(): v for k, v in record.row.items()}
    options = {k.upper(): row[k] for k in "abcdefgh" if row.get(k) is not None}
    lettered = _lettered(record, options, "columns A, B, C, D")
    subject = str(row.get("subject") or Path(record.path).stem).strip()
    cased = Record(record.path, record.line, row, record.columns)
    return ChoiceItem(_string(cased, "question"), lettered, _answer(record, row.get("answer"), lettered, False),
                      False, {"subject": subject, "subject_zh": CMMLU_SUBJECTS.get(subject, subject)})


# A label in MedS-Bench's input text: a letter with ":" "." or ")" after it, not inside a word.
_MEDS_LABEL = "(?<![A-Za-z0-9])\\(?{letter}\\s*[:.：)）]\\s*"
_MEDS_PREFIX = re.compile(r"^\s*(?:the\s+(?:right|correct)\s+answer\s+is|the\s+answer\s+is|answer\s*[:：]|"
                          r"正确答案是|答案是|答案[:：])\s*", re.IGNORECASE)


def meds_options(text: str) -> list[str] | None:
    """The options written in a MedS-Bench input ("Options: A: x\\tB: y" or one "A. x" per line): the text after
    each label up to the next label (the last one up to the end of its line); None when fewer than two."""
    starts: list[tuple[int, int]] = []
    pos = 0
    for letter in LETTERS:
        m = re.compile(_MEDS_LABEL.format(letter=letter)).search(text, pos)
        if not m:
            break
        starts.append((m.start(), m.end()))
        pos = m.end()
    if len(starts) < 2:
        return None
    out = []
    for i, (_, end) in enumerate(starts):
        if i + 1 < len(starts):
            stop = starts[i + 1][0]
        else:
            stop = text.find("\n", end)
            stop = len(text) if stop < 0 else stop
        out.append(text[end:stop].strip().rstrip(",;，；").strip())
    return out


def _meds_bench(record: Record) -> ChoiceItem:
    row = record.row
    if "_bad" in row:
        raise record.error(f"instance should be an object with input and output, got {type(row['_bad']).__name__}")
    output = row.get("output")
    if isinstance(output, list):  # some MedS tasks list accepted outputs; the first is the reference
        output = output[0] if output else None
    if not isinstance(output, str) or not output.strip():
        raise record.error("missing field 'output' (the reference answer)")
    instruction = row.get("instruction") or row.get("Definition")
    if isinstance(instruction, list):
        instruction = instruction[0] if instruction else None
    if not isinstance(instruction, str) or not instruction.strip():
        raise record.error("missing field 'instruction' (the task's definition)")
    text = _string(record, "input")
    stripped = _MEDS_PREFIX.sub("", output.strip())
    m = re.match(r"\W*([A-Z])(?![A-Za-z])", stripped)
    if not m:
        raise record.error(f"output {output[:60]!r} does not start with an option letter: only MedS-Bench's "
                           f"lettered multiple-choice tasks are choice sets (run the others as generation sets, "
                           f"format: alpaca)")
    options = meds_options(text)
    if options is None or LETTERS.index(m.group(1)) >= len(options):
        # The input's own layout could not be read: letters only, so the answer is still read by its letter.
        options = [""] * max(4, LETTERS.index(m.group(1)) + 1)
    fields = {"instruction": instruction.strip(), "input": text, "output": output.strip()}
    return ChoiceItem(text, options, m.group(1), False, fields)


CHOICE_READERS: dict[str, Callable[[Record], ChoiceItem]] = {
    "cmb_exam": _cmb_exam, "cmexam": _cmexam, "medqa": _medqa, "cmmlu": _cmmlu, "meds_bench": _meds_bench}


def choice_item(record: Record, fmt: str) -> ChoiceItem:
    """One row of a choice benchmark as a ChoiceItem; DataError naming the row when it is not in that layout."""
    return CHOICE_READERS[fmt](record)


def healthbench_row(record: Record) -> Conversation:
    """A HealthBench row: the conversation to answer, its rubrics and prompt_id for the reward source, and its
    example_tags (saved as the row's tag "example_tags": HealthBench scores every example tag too)."""
    row = record.row
    messages = row_messages(record, row.get("prompt"), "prompt")
    metadata = row_rubric_metadata(record)
    if not metadata:
        raise record.error("'rubrics' should be a non-empty list of {criterion, points, tags}")
    tags = row.get("example_tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise record.error("'example_tags' should be a list of strings")
    return Conversation(messages, None, metadata, {"example_tags": list(tags)})


def cmb_clin_rows(record: Record) -> list[Conversation]:
    """A CMB-Clin case: one row per question, the first asked after the case description, each later one after
    the earlier questions and their reference solutions (as CMB's own evaluation feeds them)."""
    pairs = record.row.get("QA_pairs")
    if not isinstance(pairs, list) or not pairs:
        raise record.error("'QA_pairs' should be a non-empty list of {question, solution}")
    description = _string(record, "description")
    out, history = [], []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, dict):
            raise record.error(f"QA_pairs[{i}] should be an object {{question, solution}}")
        inner = Record(record.path, record.line, pair)
        question, solution = _string(inner, "question"), _string(inner, "solution", "answer")
        asked = f"{description}\n{question}" if i == 0 else question
        history.append({"role": "user", "content": asked})
        out.append(Conversation(list(history), solution))
        history.append({"role": "assistant", "content": solution})
    return out


# --- prompts -------------------------------------------------------------------------------------------------------
def choice_messages(fmt: str, item: ChoiceItem, shots: Sequence[ChoiceItem] = ()) -> list[dict[str, str]]:
    """The chat messages that ask `item`, after the solved `shots`, in the benchmark's layout (module docstring)."""
    if fmt == "cmb_exam":
        messages = []
        for shot in shots:
            messages += [{"role": "user", "content": _cmb_query(shot)},
                         {"role": "assistant", "content": f"答案是{shot.answer}。"}]
        return messages + [{"role": "user", "content": _cmb_query(item)}]
    if fmt == "meds_bench":
        instruction, text = item.fields["instruction"], item.fields["input"]
        if shots:
            return [{"role": "user", "content": meds_ins_prompt(
                instruction, text, [(s.fields["input"], s.fields["output"]) for s in shots])}]
        return [{"role": "user", "content": f"{instruction}\n{text}"}]
    header, block, answered = _LAYOUTS[fmt](item)
    body = "".join(_LAYOUTS[fmt](s)[1] + answered.format(answer=s.answer) + "\n\n" for s in shots)
    return [{"role": "user", "content": header + body + block}]


def _cmb_query(item: ChoiceItem) -> str:
    kind, cls = item.fields.get("exam_type"), item.fields.get("exam_class")
    where = f"{kind}中{cls}" if kind and cls else kind or cls or "医学"
    options = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(item.options))
    return (f"以下是中国{where}考试的一道{item.fields['question_type']}，不需要做任何分析和解释，直接输出答案选项。\n"
            f"{item.question}\n{options}")


def _cmexam_layout(item: ChoiceItem) -> tuple[str, str, str]:
    kind = "多项选择题，请选出其中所有正确答案。" if item.multiple else "单项选择题，请选出其中的正确答案。"
    options = format_options(item.options, " ")
    return f"以下是中国医师资格考试的{kind}\n\n", f"问题: {item.question}\n选项:\n{options}\n答案: ", "{answer}"


def _medqa_layout(item: ChoiceItem) -> tuple[str, str, str]:
    options = format_options(item.options)
    if item.fields.get("language") == "zh":
        return ("以下是中国医师资格考试的单项选择题，请直接给出正确答案的选项。\n\n",
                f"问题：{item.question}\n{options}\n答案：", "{answer}")
    return ("The following are multiple choice questions (with answers) about medicine.\n\n",
            f"Question: {item.question}\n{options}\nAnswer:", " {answer}")


def _cmmlu_layout(item: ChoiceItem) -> tuple[str, str, str]:
    return (f"以下是关于{item.fields['subject_zh']}的单项选择题，请直接给出正确答案的选项。\n\n",
            f"题目：{item.question}\n{format_options(item.options)}\n答案是：", "{answer}")


# fmt -> item -> (header, the question's block up to where the answer goes, how a shot's answer completes it)
_LAYOUTS: dict[str, Callable[[ChoiceItem], tuple[str, str, str]]] = {
    "cmexam": _cmexam_layout, "medqa": _medqa_layout, "cmmlu": _cmmlu_layout}
