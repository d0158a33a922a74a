"""Markdown for the evaluation report: number formatting, escaped cells, aligned tables.

Shared by rlmed.eval.report (the page), rlmed.eval.report_stats (its statistics sections) and rlmed.eval.plots
(bar labels), so a number reads the same in every table and chart.
"""

from __future__ import annotations

import math
from typing import Any

from rlmed.eval.bootstrap import lower_is_better


def number(value: Any) -> float | None:
    """A finite number, or None (bools, strings such as the "nan" metrics.jsonl stores, and inf excluded)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == 0:
            return "0"
        return f"{value:.2f}" if 1 <= abs(value) < 1e5 else f"{value:.4g}"
    return str(value)


class Markup(str):
    """A cell already in markdown (e.g. a bold best value): written as it is, not escaped again."""


def cell(value: Any) -> str:
    if isinstance(value, Markup):
        return value
    # A "|" would end the cell and a newline the row: markdown tables have no other way to quote them.
    return fmt(value).replace("|", "\\|").replace("\n", " ")


def numeric_cell(value: Any) -> bool:
    if value is None or number(value) is not None:
        return True
    try:
        float(str(value).strip("*%").replace("–", "nan"))
        return True
    except ValueError:
        return False


def md_table(columns: list[str], rows: list[list[Any]]) -> list[str]:
    """A markdown table; columns of numbers are right-aligned so their digits line up, text left-aligned."""
    head = "| " + " | ".join(cell(c) for c in columns) + " |"
    numeric = [all(numeric_cell(row[i]) for row in rows) for i in range(len(columns))]
    rule = "|" + "|".join("---:" if n and rows else ":---" for n in numeric) + "|"
    body = ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return [head, rule, *body]


def metric_label(metric: str) -> str:
    return f"{metric} ↓" if lower_is_better(metric) else metric
