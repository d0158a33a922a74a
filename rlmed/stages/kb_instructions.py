"""Stage `kb_instructions`: question/answer instructions generated from a medical knowledge base (QiZhen-style).

QiZhen built instruction data from its drug and disease knowledge base by filling question/answer templates
with each entry's fields ("{drug}的适应病症是什么？" → "{drug}的适应病症包括：{indications}。"). This stage does
the same for any table of rows: every template is applied to every row that has all of its placeholders
(non-empty; list fields joined with `list_separator`), and the pairs are written as alpaca rows to
`instructions.jsonl`, usable as `$<id>.instructions` by `pretrain` and `sft`.

Order is fixed (sources, then rows in file order, then templates in the order given), so the same table and
templates give the same file byte for byte. A table source's `columns:` and `on_bad_rows:` apply as anywhere;
its `format:` is not used, since knowledge-base rows are not dialogues.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any

from rlmed.data.records import DataError, Record
from rlmed.stages.base import Input, StageContext, StageSpec

TEMPLATE_KEYS = ("question", "answer")


@dataclass(kw_only=True)
class Args:
    templates: list[dict[str, str]]
    """Templates, each {question: "...", answer: "..."}; `{field}` placeholders name fields of the table's rows."""
    list_separator: str = "、"
    """What joins the items of a list field filled into a placeholder (Chinese enumeration comma by default)."""
    system: str | None = None
    """A system prompt written into every row's `system` field; None: no system field."""

    def __post_init__(self) -> None:
        if not self.templates:
            raise ValueError(f"templates: give at least one {{question: ..., answer: ...}} template, got "
                             f"{self.templates!r}")
        for index, template in enumerate(self.templates):
            placeholders(template, index)


def placeholders(template: dict[str, str], index: int) -> list[str]:
    """The field names a template fills (question's first, each once), or ValueError naming the template."""
    where = f"templates[{index}]"
    if sorted(template) != sorted(TEMPLATE_KEYS):
        raise ValueError(f"{where}: expected the keys question and answer, got {', '.join(map(str, template))}")
    names: list[str] = []
    for key in TEMPLATE_KEYS:
        text = template[key]
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{where}.{key}: expected a non-empty template string, got {text!r}")
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:  # unbalanced braces
            raise ValueError(f"{where}.{key}: {exc} (write {{{{ and }}}} for literal braces)") from None
        for _literal, name, _spec, _conversion in parsed:
            if name is None:
                continue
            if not name.isidentifier():
                # Positional "{}" and attribute/index access have no meaning for a row's fields.
                raise ValueError(f"{where}.{key}: placeholder {{{name}}} must name a row field, e.g. {{drug}}")
            if name not in names:
                names.append(name)
    return names


def _value(value: Any, separator: str) -> Any:
    """A row field as filled into a template: lists joined, empty values None (the template is skipped)."""
    if isinstance(value, list):
        items = [str(v).strip() for v in value if v is not None and str(v).strip()]
        return separator.join(items) if items else None
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return value


def render(record: Record, args: Args, fields: list[list[str]]) -> list[tuple[int, str, str] | int]:
    """Each template's (index, question, answer) for this row, or just its index when the row lacks a field.

    A field holding an object has no sensible text form, so it is a bad row (DataError), as is a value its
    format spec does not fit (e.g. `{dose:.1f}` on text).
    """
    out: list[tuple[int, str, str] | int] = []
    for index, (template, names) in enumerate(zip(args.templates, fields)):
        values = {name: _value(record.row.get(name), args.list_separator) for name in names}
        if any(v is None for v in values.values()):
            out.append(index)
            continue
        for name, value in values.items():
            if isinstance(value, dict):
                raise record.error(f"field '{name}' is an object; templates[{index}] needs text, a number or a list")
        try:
            question, answer = (template[key].format(**values) for key in TEMPLATE_KEYS)
        except (ValueError, TypeError) as exc:
            raise record.error(f"templates[{index}] cannot be filled from this row: {exc}") from None
        out.append((index, question, answer))
    return out


def run(ctx: StageContext, inputs: dict[str, Any], args: Args) -> dict[str, Any]:
    from rlmed.artifacts import atomic_write_jsonl
    from rlmed.data.sources import bad_row_metrics, load_sources

    fields = [placeholders(t, i) for i, t in enumerate(args.templates)]
    present: set[str] = set()  # every field some row has, to tell a misspelt placeholder from a sparse one

    def convert(record: Record, _fmt: str | None) -> list[tuple[int, str, str] | int]:
        present.update(k for k, v in record.row.items() if v is not None)
        return render(record, args, fields)

    loaded = load_sources(inputs["table"], convert, seed=ctx.seed, keep_order=True)
    converted: list[list[tuple[int, str, str] | int]] = loaded.items
    rows_read = len(converted) + sum(loaded.bad_rows.values())
    for index, names in enumerate(fields):
        missing = [n for n in names if n not in present]
        if missing:
            raise ValueError(f"args.templates[{index}]: placeholder(s) {', '.join('{' + n + '}' for n in missing)} "
                             f"name no field of any row (fields found: {', '.join(sorted(present)) or 'none'})")

    pairs = [0] * len(args.templates)
    skipped = [0] * len(args.templates)
    lines = []
    for outcomes in converted:
        for outcome in outcomes:
            if isinstance(outcome, int):
                skipped[outcome] += 1
                continue
            index, question, answer = outcome
            pairs[index] += 1
            row = {"instruction": question, "input": "", "output": answer}
            if args.system is not None:
                row["system"] = args.system
            lines.append(row)
    if not lines:
        raise DataError(", ".join(s.path for s in inputs["table"]), None,
                        "no row has all the fields of any template; nothing to write")
    for index, count in enumerate(pairs):
        if not count:
            ctx.log.warning("templates[%d] matched no row (%d rows lacked one of its fields)", index, skipped[index])
    # Written whole and renamed into place, so a crash never leaves a half file a later stage could read.
    atomic_write_jsonl(ctx.output("instructions"), lines)
    ctx.log.info("kb_instructions: %d rows, %d pairs written (per template: %s)", rows_read, len(lines), pairs)
    return {"rows_read": rows_read, "pairs_written": len(lines), "pairs_per_template": pairs,
            "skipped_per_template": skipped, **bad_row_metrics(loaded)}


SPEC = StageSpec(
    kind="kb_instructions",
    args=Args,
    inputs={"table": Input("data", many=True, doc="knowledge-base rows, e.g. {drug, indications: [...]}")},
    outputs={"instructions": "instructions.jsonl"},
    run=run,
    ranks="main",
    doc=__doc__,
)
