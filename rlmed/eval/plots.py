"""The evaluation report's charts: training curves, pairwise win/tie/loss bars, one bar chart per eval set.

Matplotlib's object API with the Agg canvas: no display is needed, and pyplot's global backend and figure
registry (which a notebook user may rely on) are left alone. Every PNG is written whole and renamed into place
(rlmed.artifacts). Fonts are the caller's business (rlmed.eval.plot_fonts around the calls).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from rlmed.artifacts import atomic_write_bytes
from rlmed.eval.markdown import fmt, metric_label, number


def _figure(width: float, height: float) -> Any:
    # Imported here: building a recipe or the CLI should not pay matplotlib's import time.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    fig.clear()  # the figure is not registered with pyplot, so dropping it (and its artists) frees it
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one logged key; records without a step are placed by their position."""
    xs, ys = [], []
    for index, record in enumerate(records):
        value = number(record.get(key))
        if value is None:
            continue
        step = number(record.get("step"))
        xs.append(step if step is not None else float(index))
        ys.append(value)
    return xs, ys


def curves(stages: list[Any], keys: tuple[str, ...]) -> list[tuple[Any, str, tuple, tuple]]:
    """Per stage (report.StageInfo), the first of `keys` it logged: (stage, key, train series, held-out
    eval_<key> series)."""
    found = []
    for stage in stages:
        for key in keys:
            train = _series(stage.records, key)
            if train[0]:
                found.append((stage, key, train, _series(stage.records, f"eval_{key}")))
                break
    return found


def _grid(n: int) -> tuple[int, int]:
    cols = min(3, n)
    return math.ceil(n / cols), cols


def plot_curves(curves: list, path: Path, what: str) -> Path | None:
    """One subplot per stage: the scales differ too much (pretraining loss ~8, GRPO loss ~0) to share axes."""
    if not curves:
        return None
    rows, cols = _grid(len(curves))
    fig = _figure(4.2 * cols, 3.0 * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (stage, key, train, held_out) in zip(axes.flat, curves):
        # A marker on short series: one PPO rollout is a single point, which a bare line would not draw.
        ax.plot(*train, "o-" if len(train[0]) < 3 else "-", markersize=4, linewidth=1.2, label=key)
        if held_out[0]:
            ax.plot(*held_out, "o--", markersize=4, linewidth=1, label=f"eval_{key}")
        ax.set_title(f"{stage.id} ({stage.kind})", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        if held_out[0]:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(curves):]:
        ax.set_visible(False)
    fig.suptitle(what)
    return _save(fig, path)


def plot_pairwise(rows: list[list[Any]], baseline: Any, path: Path) -> Path | None:
    """Stacked horizontal bars of win/tie/loss/failed shares per model; counts written on the segments."""
    rows = [r for r in rows if r[6]]  # n == 0: nothing was judged, a bar would divide by zero
    if not rows:
        return None
    fig = _figure(7.5, 1.2 + 0.55 * len(rows))
    ax = fig.subplots()
    parts = (("win", 2, "#4caf50"), ("tie", 3, "#bdbdbd"), ("loss", 4, "#e57373"), ("failed", 5, "#757575"))
    names = [str(r[0]) for r in rows]
    left = [0.0] * len(rows)
    for label, column, colour in parts:
        shares = [r[column] / r[6] for r in rows]
        bars = ax.barh(names, shares, left=left, color=colour, label=label)
        for bar, row, share in zip(bars, rows, shares):
            if share >= 0.06:  # a label on a thinner segment would overflow it
                ax.text(bar.get_x() + bar.get_width() / 2, bar.get_y() + bar.get_height() / 2, str(row[column]),
                        ha="center", va="center", fontsize=8)
        left = [a + b for a, b in zip(left, shares)]
    ax.set_xlim(0, 1)
    ax.invert_yaxis()  # first model on top, as in the table
    ax.set_xlabel("share of judged prompts")
    ax.set_title(f"Pairwise judgement against {baseline}")
    fig.legend(ncols=4, fontsize=8, loc="outside lower center")  # below the axes, kept inside the image
    return _save(fig, path)


def plot_family(per_model: dict[str, dict[str, Any]], family: str, metrics: list[str], kind: str | None,
                path: Path) -> Path | None:
    """One small chart per metric of an eval set (`per_model`: {model: {metric: value}}), models side by side,
    so BLEU in % and a reward near 0 each get an axis of their own; `kind`: the set's kind, for the title."""
    metrics = [k for k in metrics if any(number(v.get(k)) is not None for v in per_model.values())]
    if not metrics:
        return None
    models = list(per_model)
    colours = [f"C{i % 10}" for i in range(len(models))]  # the same colour for a model on every chart
    cols = min(4, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig = _figure(max(2.0 + 0.55 * len(models), 3.2) * cols, 3.0 * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        values = [number(per_model[m].get(metric)) for m in models]
        heights = [0.0 if v is None else v for v in values]
        bars = ax.bar(range(len(models)), heights, color=colours)
        for bar, value in zip(bars, values):
            ax.annotate("n/a" if value is None else fmt(value), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(range(len(models)), models, rotation=30 if len(models) > 3 else 0, fontsize=8)
        ax.set_title(metric_label(metric.split("/", 1)[1] if metric.startswith(f"{family}/") else metric),
                     fontsize=9)
        ax.margins(y=0.15)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    fig.suptitle(f"{family} ({kind})" if kind else family)
    return _save(fig, path)
