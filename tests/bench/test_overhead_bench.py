"""bench.overhead: its ratios, and one real (tiny) rlmed-vs-trl pair end to end."""

from __future__ import annotations

import json

import pytest

from bench import overhead


def run(startup: float, steps: float, rss: float) -> dict:
    return {"startup_s": startup, "steps_per_s": steps, "peak_rss_mib": rss}


def test_ratio_summary_is_rlmed_over_trl_of_medians_with_verdicts():
    runs = {"rlmed": [run(10, 2.0, 1000), run(12, 1.0, 1100), run(11, 3.0, 1050)],
            "trl": [run(10, 2.0, 1000), run(10, 2.0, 1000), run(10, 2.0, 1000)]}
    summary = overhead.ratio_summary(runs)
    assert summary["steps_per_s"]["ratio"] == pytest.approx(1.0)  # median 2.0 / 2.0
    assert summary["steps_per_s"]["met"] is True
    assert summary["startup_s"]["ratio"] == pytest.approx(1.1)  # median 11 / 10, within 1.2
    assert summary["startup_s"]["met"] is True
    assert summary["peak_rss_mib"]["ratio"] == pytest.approx(1.05)
    assert summary["peak_rss_mib"]["median_pair_ratio"] == pytest.approx(1.05)  # ratios 1.0, 1.1, 1.05
    slow = {"rlmed": [run(30, 1.0, 2000)], "trl": [run(10, 2.0, 1000)]}
    verdicts = {k: v["met"] for k, v in overhead.ratio_summary(slow).items()}
    assert verdicts == {"steps_per_s": False, "peak_rss_mib": False, "startup_s": False}


def test_both_sides_train_and_are_timed(tmp_path):
    out = tmp_path / "overhead.json"
    assert overhead.main(["--pairs", "1", "--steps", "4", "--tasks", "sft", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    runs = result["tasks"]["sft"]["runs"]
    for side in ("rlmed", "trl"):
        (figures,) = runs[side]
        assert figures["steps"] == 4  # every optimizer step was seen by the clock callback
        assert figures["steps_per_s"] > 0 and figures["peak_rss_mib"] > 100
        assert 0 < figures["train_peak_rss_mib"] <= figures["peak_rss_mib"]
        assert 0 < figures["startup_s"] < figures["wall_s"]
    assert set(result["tasks"]["sft"]["summary"]) == {"steps_per_s", "peak_rss_mib", "startup_s"}
