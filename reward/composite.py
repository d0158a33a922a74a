"""A weighted combination of reward sources, each normalised over the batch before weighting.

Sources live on different scales (a judge in 0..1 clustered near 0.7, ROUGE-L near 0.2, a reward model's raw
logit anywhere), so each source's values are normalised over the batch first ("zscore" by default, or "minmax",
or "none") and then summed with the weights. Normalisation uses only the samples that EVERY source scored —
the ones that get a composite value — so a sample that fails in one source does not shift the others' statistics.
A constant source normalises to 0.0 (zscore) or 0.5 (minmax): it carries no ranking information.

A sample that any source could not score gets `Score.failed`, naming the failing source(s): a partial sum would
be an invented score.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import math
from typing import Any, Literal, Sequence

from reward.base import Sample, Score

logger = logging.getLogger(__name__)


def build_component(spec: dict[str, Any]) -> Any:
    """Instantiate `{"_component_": "package.module.Class", **kwargs}` (nested component dicts are built too)."""
    spec = dict(spec)
    target = spec.pop("_component_", None)
    if not isinstance(target, str) or "." not in target:
        raise ValueError(f"a source dict needs '_component_': 'module.Class', got {target!r}")
    module_name, _, attr = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import reward source {target!r}: {exc}") from exc
    kwargs = {k: build_component(v) if isinstance(v, dict) and "_component_" in v else v for k, v in spec.items()}
    return cls(**kwargs)


def normalise(values: list[float], how: Literal["none", "zscore", "minmax"]) -> list[float]:
    """Normalise values over the batch (population standard deviation for zscore)."""
    if how == "none" or not values:
        return list(values)
    if how == "zscore":
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        return [0.0 if std == 0 else (v - mean) / std for v in values]
    if how == "minmax":
        low, high = min(values), max(values)
        return [0.5 if high == low else (v - low) / (high - low) for v in values]
    raise ValueError(f"normalize must be 'none', 'zscore' or 'minmax', got {how!r}")


class Composite:
    """sources: built objects, (source, weight) tuples, or dicts `{"_component_": ..., "weight": w, "name": n,
    **kwargs}`. Names default to the lower-cased class name, de-duplicated with a numeric suffix.

    value = Σ weight_s · normalised_s; parts = each source's raw value under its name plus its own parts as
    "name.part"; rationale joins the sources' rationales; usage is {name: usage}.
    """

    def __init__(self, sources: Sequence[Any], normalize: Literal["none", "zscore", "minmax"] = "zscore") -> None:
        if normalize not in ("none", "zscore", "minmax"):
            raise ValueError(f"normalize must be 'none', 'zscore' or 'minmax', got {normalize!r}")
        if not sources:
            raise ValueError(f"Composite needs at least one source, got {list(sources)!r}")
        self.normalize = normalize
        self.sources: list[tuple[str, Any, float]] = []
        taken: set[str] = set()
        for entry in sources:
            name: str | None = None
            if isinstance(entry, dict):
                spec = dict(entry)
                weight, name = spec.pop("weight", 1.0), spec.pop("name", None)
                source = build_component(spec)
            elif isinstance(entry, tuple) and len(entry) == 2:
                source, weight = entry
            else:
                source, weight = entry, 1.0
            if not callable(getattr(source, "score", None)):
                raise TypeError(f"{source!r} is not a reward source (no score method)")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise ValueError(f"weight of {source!r} must be a finite number, got {weight!r}")
            name = name or type(source).__name__.lower()
            base, n = name, 2
            while name in taken:  # two sources of one class must stay distinguishable in parts
                name, n = f"{base}{n}", n + 1
            taken.add(name)
            self.sources.append((name, source, float(weight)))

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}×{w:g}" for n, _, w in self.sources)
        return f"Composite([{inner}], normalize={self.normalize!r})"

    async def score(self, samples: Sequence[Sample]) -> list[Score]:
        """Score with every source concurrently, then normalise and combine per sample."""
        per_source: list[list[Score]] = await asyncio.gather(*(s.score(samples) for _, s, _ in self.sources))
        for (name, _, _), scores in zip(self.sources, per_source):
            if len(scores) != len(samples):
                raise RuntimeError(f"source {name!r} returned {len(scores)} scores for {len(samples)} samples")
        complete = [i for i in range(len(samples)) if all(s[i].value is not None for s in per_source)]
        combined = {i: 0.0 for i in complete}
        for (_, _, weight), scores in zip(self.sources, per_source):
            normed = normalise([float(scores[i].value) for i in complete], self.normalize)  # type: ignore[arg-type]
            for i, v in zip(complete, normed):
                combined[i] += weight * v

        out: list[Score] = []
        for i in range(len(samples)):
            parts: dict[str, float] = {}
            usage: dict[str, Any] = {}
            rationales, errors = [], []
            for (name, _, _), scores in zip(self.sources, per_source):
                score = scores[i]
                if score.value is None:
                    errors.append(f"{name}: {score.error or 'no value'}")
                else:
                    parts[name] = float(score.value)
                parts.update({f"{name}.{k}": v for k, v in score.parts.items()})
                if score.usage:
                    usage[name] = score.usage
                if score.rationale:
                    rationales.append(f"[{name}] {score.rationale}")
            if errors:
                out.append(Score(value=None, parts=parts, rationale="\n".join(rationales),
                                 error="source failed: " + "; ".join(errors), usage=usage))
            else:
                out.append(Score(value=combined[i], parts=parts, rationale="\n".join(rationales), usage=usage))
        return out
