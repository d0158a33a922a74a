"""Every metric of every model against another model on the same eval rows, with paired-bootstrap intervals.

Input: per model, its per-row values per eval set (rlmed.eval.generations.model_values, computed once from the
saved rows). Output, as results.json keeps it:

    comparisons[model]["<set>/<metric>"] = {"diff", "low", "high", "n", "significant", "verdict", "lower_is_better"}
    breakdowns[field][value] = {"n": {set: rows}, "metrics": {model: {"<set>/<metric>": mean}},
                                "comparisons": {model: {"<set>/<metric>": {...as above}}}}

Pairs are formed by eval row index (models answer the same rows). Mean metrics (BLEU, ROUGE, accuracy, hit
rates, the reward and its parts) are resampled as per-row means; Distinct-1/2 are corpus-level and recomputed on
every draw (rlmed.eval.bootstrap.Distinct). Every comparison on one eval set uses the draws seeded by (seed, set),
a breakdown group those seeded by (seed, set, field, value), so `rlmed report --recompute` gives the same numbers.
"""

from __future__ import annotations

from typing import Any, Sequence

from rlmed.eval.bootstrap import MIN_ROWS, RESAMPLES, Distinct, entry, lower_is_better, paired_means
from rlmed.eval.generations import SetValues, summarise, tag_key

DISTINCT_ORDERS = {"distinct_1": 1, "distinct_2": 2}


def _aligned(a: SetValues, b: SetValues) -> tuple[SetValues, SetValues]:
    """Both restricted to the row indices they share, in the same order (normally they share them all)."""
    if a.index == b.index:
        return a, b
    common = sorted(set(a.index) & set(b.index))
    pos_a, pos_b = {i: p for p, i in enumerate(a.index)}, {i: p for p, i in enumerate(b.index)}
    return a.subset([pos_a[i] for i in common]), b.subset([pos_b[i] for i in common])


def compare_sets(a: SetValues, b: SetValues, seed: int, key: Sequence[str], resamples: int = RESAMPLES,
                 metrics: Sequence[str] | None = None, min_rows: int = MIN_ROWS) -> dict[str, dict[str, Any]]:
    """{metric: interval entry} of a − b on one eval set (or breakdown group), all metrics on the same draws.
    `metrics`: only these (default: every metric both have); `key` names the draws (the set, and the group)."""
    a, b = _aligned(a, b)
    if not a.index:
        return {}
    means = [k for k in a.rows if k in b.rows and (metrics is None or k in metrics)]
    corpus = [k for k in DISTINCT_ORDERS if a.tokens is not None and b.tokens is not None
              and (metrics is None or k in metrics)]
    mean_out, corpus_out = paired_means(
        [a.rows[k] for k in means], [b.rows[k] for k in means], seed, key, resamples,
        distinct=[(Distinct(a.tokens, DISTINCT_ORDERS[k]), Distinct(b.tokens, DISTINCT_ORDERS[k]))  # type: ignore[arg-type]
                  for k in corpus])
    found = dict(zip(means, mean_out)) | dict(zip(corpus, corpus_out))
    # The order summarise() reports them in: text metrics, Distinct, then the reward and its parts.
    order = [k for k in a.rows if not k.startswith("reward")] + corpus + [k for k in a.rows if k.startswith("reward")]
    return {k: entry(found[k], lower_is_better(k), min_rows) for k in order if k in found}


def compare_models(a: dict[str, SetValues], b: dict[str, SetValues], seed: int, resamples: int = RESAMPLES,
                   keys: Sequence[str] | None = None, group: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """{"<set>/<metric>": entry} of model a − model b over the eval sets both answered (`keys`: only these;
    `group`: the breakdown field and value, which name the draws along with the set)."""
    out: dict[str, dict[str, Any]] = {}
    for name in a:
        if name not in b:
            continue
        wanted = None if keys is None else [k.split("/", 1)[1] for k in keys if k.split("/", 1)[0] == name]
        if wanted == []:
            continue
        found = compare_sets(a[name], b[name], seed, (name, *group), resamples, wanted)
        out.update({f"{name}/{k}": v for k, v in found.items()})
    return out


def comparisons(values: dict[str, dict[str, SetValues]], baseline: str, seed: int,
                resamples: int = RESAMPLES) -> dict[str, dict[str, dict[str, Any]]]:
    """Every model but the baseline against the baseline, on every metric (results.json's `comparisons`)."""
    return {model: compare_models(per_set, values[baseline], seed, resamples)
            for model, per_set in values.items() if model != baseline}


def _groups(values: dict[str, SetValues], field: str) -> dict[str, dict[str, list[int]]]:
    """{tag value key: {set: positions of its rows}} in first-seen order; rows without the field left out."""
    groups: dict[str, dict[str, list[int]]] = {}
    for name, set_vals in values.items():
        for position, tags in enumerate(set_vals.tags):
            if tags.get(field) is not None:
                groups.setdefault(tag_key(tags[field]), {}).setdefault(name, []).append(position)
    return groups


def _subset(values: SetValues, rows: list[int]) -> SetValues:
    """`values` restricted to the eval row indices `rows` (those it has)."""
    at = {i: p for p, i in enumerate(values.index)}
    return values.subset([at[i] for i in rows if i in at])


def breakdowns(values: dict[str, dict[str, SetValues]], baseline: str, fields: Sequence[str], seed: int,
               resamples: int = RESAMPLES) -> dict[str, dict[str, dict[str, Any]]]:
    """Per field of `fields` and per value of it: rows per set, every model's metric means over those rows,
    and every model against the baseline on them (results.json's `breakdowns`). Groups are read from the
    baseline's rows (every model answered the same rows); a field no row has gives {}."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for field in fields:
        out[field] = {}
        for value, by_set in _groups(values[baseline], field).items():
            rows = {name: [values[baseline][name].index[p] for p in positions] for name, positions in by_set.items()}
            subsets = {model: {name: _subset(per_set[name], idx) for name, idx in rows.items() if name in per_set}
                       for model, per_set in values.items()}
            metrics = {}
            for model, per_set in subsets.items():
                merged: dict[str, Any] = {}
                for name, set_vals in per_set.items():
                    if set_vals.index:
                        means, reward = summarise(set_vals)
                        merged.update({f"{name}/{k}": v for k, v in (means | reward).items()})
                metrics[model] = merged
            out[field][value] = {
                "n": {name: len(idx) for name, idx in rows.items()},
                "metrics": metrics,
                "comparisons": {model: compare_models(per_set, subsets[baseline], seed, resamples,
                                                      group=(field, value))
                                for model, per_set in subsets.items() if model != baseline},
            }
    return out

