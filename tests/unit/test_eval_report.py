"""The evaluation report: tables, plots and their links, built from a synthetic run folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rlmed.eval.report import ReportError, main_report, render_report, tables

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

RESULTS = {
    "baseline": "base",
    "models": {"base": {"path": "runs/x/base/model", "stage": "base"},
               "sft": {"path": "runs/x/sft/model", "stage": "sft"},
               "ppo": {"path": "runs/x/ppo/model", "stage": "ppo"}},
    "eval_sets": {"dialogues": {"rows": 40, "kind": "generation"}, "mcq": {"rows": 30, "kind": "choice"},
                  "kb": {"rows": 20, "kind": "hitrate"}},
    "metrics": {
        "base": {"dialogues/bleu_1": 8.5, "dialogues/rouge_l": 15.0, "dialogues/perplexity": 30.0,
                 "mcq/accuracy": 25.0, "kb/hit_rate_1": 20.0},
        "sft": {"dialogues/bleu_1": 12.3, "dialogues/rouge_l": 20.1, "dialogues/perplexity": 11.0,
                "mcq/accuracy": 35.0, "kb/hit_rate_1": 40.0},
        "ppo": {"dialogues/bleu_1": 11.9, "dialogues/rouge_l": 21.4, "dialogues/perplexity": 12.5,
                "mcq/accuracy": 33.0, "kb/hit_rate_1": 45.0},
    },
    "pairwise": {"sft": {"win": 10, "tie": 25, "loss": 5, "failed": 0, "n": 40, "win_rate": 0.25},
                 "ppo": {"win": 18, "tie": 12, "loss": 8, "failed": 2, "n": 40, "win_rate": 0.45}},
    "reward": {"base": {"dialogues/reward_mean": 0.12}, "sft": {"dialogues/reward_mean": 0.61},
               "ppo": {"dialogues/reward_mean": 0.83}},
    "contamination": [{"eval_set": "dialogues", "row": 3, "kind": "exact", "source": "data/x.jsonl:12",
                       "similarity": 1.0}],
    # As rlmed.eval.statistics writes them (values made up; the report judges nothing, it shows these).
    "statistics": {"resamples": 2000, "seed": 42, "confidence": 0.95, "min_rows": 10},
    "comparisons": {
        "sft": {"mcq/accuracy": {"diff": 10.0, "low": 2.5, "high": 17.5, "n": 30, "significant": True,
                                 "verdict": "better", "lower_is_better": False},
                "dialogues/perplexity": {"diff": -19.0, "low": -25.0, "high": -12.0, "n": 40, "significant": True,
                                         "verdict": "better", "lower_is_better": True}},
        "ppo": {"mcq/accuracy": {"diff": 8.0, "low": -1.0, "high": 16.0, "n": 30, "significant": False,
                                 "verdict": "no clear change", "lower_is_better": False}}},
    "breakdowns": {"red_flag": {"true": {
        "n": {"dialogues": 12},
        "metrics": {"base": {"dialogues/reward.rules.referral": 0.25}, "sft": {"dialogues/reward.rules.referral": 0.5},
                    "ppo": {"dialogues/reward.rules.referral": 0.75}},
        "comparisons": {m: {"dialogues/reward.rules.referral": {"diff": d, "low": d - 0.25, "high": d + 0.25, "n": 12,
                                                                "significant": m == "ppo", "verdict": v}}
                        for m, d, v in (("sft", 0.25, "no clear change"), ("ppo", 0.5, "better"))}}}},
    "stage_effects": [
        {"stage": "base", "kind": "tiny_model", "model": "base", "target": "mcq/accuracy", "value": 25.0,
         "compared_with": None, "change": None, "low": None, "high": None, "verdict": "—",
         "note": "no evaluated model before it to compare with"},
        {"stage": "sft", "kind": "sft", "model": "sft", "target": "mcq/accuracy", "compared_with": "base",
         "value": 35.0, "compared_value": 25.0, "change": 10.0, "low": 2.5, "high": 17.5, "n": 30,
         "verdict": "better", "method": "paired bootstrap"},
        {"stage": "rm", "kind": "reward_model", "target": "eval_pairwise_accuracy", "compared_with": "chance (0.5)",
         "value": 0.55, "compared_value": 0.5, "change": 0.05, "low": -0.08, "high": 0.17, "n": 60,
         "verdict": "no clear change", "method": "Wilson score interval"},
        {"stage": "ppo", "kind": "ppo", "model": "ppo", "target": "dialogues/reward_mean", "compared_with": "sft",
         "value": 0.83, "compared_value": 0.61, "change": 0.22, "low": -0.05, "high": 0.5, "n": 40,
         "verdict": "no clear change", "method": "paired bootstrap"},
        {"stage": "feedback", "kind": "ai_feedback", "target": None, "produced": {"pairs": 120, "score_mean": 0.71},
         "verdict": "—", "note": "not measured here: its model, if any, was not evaluated"}],
}
METRICS = ["dialogues/bleu_1", "dialogues/rouge_l", "dialogues/perplexity", "dialogues/reward_mean", "mcq/accuracy",
           "kb/hit_rate_1"]


def _stage(run_dir: Path, stage_id: str, kind: str, records: list[dict], metrics: dict, started: str) -> None:
    folder = run_dir / stage_id
    folder.mkdir(parents=True)
    if records:
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    manifest = {"id": stage_id, "kind": kind, "metrics": metrics, "started_at": started, "duration_s": 12.5,
                "config_hash": "0" * 64, "inputs": {}, "outputs": {}}
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def make_run(tmp_path: Path, reward_stages: bool = True, results: dict | None = None) -> Path:
    """base -> sft (-> ppo, dpo) -> eval, with a few logged steps each and the evaluate stage's results."""
    run_dir = tmp_path / "run"
    _stage(run_dir, "base", "tiny_model", [], {"vocab_size": 4096}, "2025-01-01T00:00:00+00:00")
    sft = [{"step": s, "loss": 4.0 / s, "learning_rate": 1e-4} for s in range(1, 11)]
    sft.append({"step": 10, "eval_loss": 0.5})
    _stage(run_dir, "sft", "sft", sft, {"global_step": 10, "last_loss": 0.4, "eval_loss": 0.5},
           "2025-01-01T01:00:00+00:00")
    if reward_stages:
        ppo = [{"step": s, "rollout": s, "reward_mean": 0.1 * s, "kl": 0.01 * s, "policy_loss": -0.1}
               for s in range(1, 6)]
        _stage(run_dir, "ppo", "ppo", ppo, {"global_step": 5, "last_reward_mean": 0.5, "last_kl": 0.05},
               "2025-01-01T02:00:00+00:00")
        dpo = [{"step": s, "loss": 0.69 - 0.05 * s, "rewards/accuracies": 0.5 + 0.05 * s,
                "rewards/margins": 0.1 * s} for s in range(1, 6)]
        _stage(run_dir, "dpo", "dpo", dpo, {"global_step": 5, "eval_rewards/margins": 0.4},
               "2025-01-01T03:00:00+00:00")
    _stage(run_dir, "eval", "evaluate", [], {"models": 3}, "2025-01-01T04:00:00+00:00")
    (run_dir / "eval" / "results.json").write_text(json.dumps(RESULTS if results is None else results),
                                                   encoding="utf-8")
    return run_dir


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[Path, list[Path], str]:
    """One full render shared by the read-only checks (plots are the slow part)."""
    run_dir = make_run(tmp_path_factory.mktemp("report"))
    written = render_report(run_dir, "eval")
    return run_dir, written, (run_dir / "eval" / "report.md").read_text(encoding="utf-8")


def _section(text: str, title: str) -> str:
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def _table_rows(section: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in section.splitlines() if line.startswith("|") and not line.startswith("|:-")
            and not line.startswith("|-")]


def test_comparison_table_lists_every_model_and_metric(rendered):
    run_dir, written, text = rendered
    assert written[0] == run_dir / "eval" / "report.md"
    rows = _table_rows(_section(text, "Metrics"))
    header, body = rows[0], rows[1:]
    assert [c.removesuffix(" ↓") for c in header[1:]] == METRICS  # models as rows: few metrics fit across
    assert [r[0] for r in body] == ["base (baseline)", "sft", "ppo"]
    by_model = {r[0].split()[0]: dict(zip(header[1:], r[1:])) for r in body}
    assert by_model["sft"]["mcq/accuracy"] == "**35.00**"  # best is bold, the others plain
    assert by_model["ppo"]["mcq/accuracy"] == "33.00"
    assert by_model["sft"]["dialogues/perplexity ↓"] == "**11.00**"  # lower is better here
    assert by_model["ppo"]["dialogues/reward_mean"] == "**0.83**"
    assert "Lower is better for the metrics marked ↓ (dialogues/perplexity)" in text
    assert "# Evaluation report: " + str(run_dir) in text
    assert "`base` (tiny_model) → `sft` (sft) → `ppo` (ppo) → `dpo` (dpo) → `eval` (evaluate)" in text
    assert f"`rlmed report {run_dir}` regenerates it" in text


def test_what_each_stage_did_comes_first_with_its_computed_verdicts(rendered):
    _, _, text = rendered
    headings = [line for line in text.splitlines() if line.startswith("#")]
    assert headings[:2] == [headings[0], "## What each stage did"] and headings[0].startswith("# Evaluation report")
    rows = _table_rows(_section(text, "What each stage did"))
    assert rows[0] == ["stage", "kind", "target measure", "compared with", "change", "95% interval", "verdict"]
    by_stage = {r[0]: r for r in rows[1:]}
    assert list(by_stage) == ["base", "sft", "rm", "ppo", "feedback"]  # results.json's order
    assert by_stage["sft"][2:] == ["mcq/accuracy", "base", "+10.00 (25.00 → 35.00)", "[+2.50, +17.50], n=30",
                                   "better"]
    assert by_stage["rm"][3] == "chance (0.5)" and by_stage["rm"][5].endswith("(Wilson)")
    assert by_stage["rm"][6] == "no clear change" and by_stage["ppo"][6] == "no clear change"
    assert by_stage["base"][3:] == ["—", "25.00 (no comparison)", "—",
                                    "— (no evaluated model before it to compare with)"]
    assert by_stage["feedback"][2] == "produced: pairs=120, score_mean=0.71" and by_stage["feedback"][5] == "—"
    assert "paired bootstrap over the eval rows (2000 resamples, seed 42" in _section(text, "What each stage did")


def test_against_the_baseline_shows_change_interval_and_verdict(rendered):
    _, _, text = rendered
    rows = _table_rows(_section(text, "Against the baseline"))
    assert rows[0] == ["metric", "base (baseline)", "sft − base", "ppo − base"]
    by_metric = {r[0]: r[1:] for r in rows[1:]}
    assert by_metric["mcq/accuracy"] == ["25.00", "+10.00 [+2.50, +17.50] better", "+8.00 [-1.00, +16.00] no clear change"]
    assert by_metric["dialogues/perplexity ↓"] == ["30.00", "-19.00 [-25.00, -12.00] better", "—"]


def test_breakdowns_show_each_group_against_the_baseline(rendered):
    _, _, text = rendered
    rows = _table_rows(_section(text, "Breakdowns"))
    assert rows[0] == ["red_flag", "n", "metric", "base (baseline)", "sft", "ppo"]
    assert rows[1] == ["true", "12", "dialogues/reward.rules.referral", "0.25", "0.5 (+0.25 [0, +0.5] no clear change)",
                       "0.75 (+0.5 [+0.25, +0.75] better)"]


def test_pairwise_table_has_the_counts(rendered):
    _, _, text = rendered
    rows = _table_rows(_section(text, "Pairwise judgement"))
    assert rows[0] == ["model", "win", "tie", "loss", "failed", "n", "win rate"]
    assert rows[1:] == [["sft", "10", "25", "5", "0", "40", "25.0%"], ["ppo", "18", "12", "8", "2", "40", "45.0%"]]


def test_contamination_match_is_listed(rendered):
    _, _, text = rendered
    section = _section(text, "Contamination")
    assert "| dialogues | 3 | exact | data/x.jsonl:12 | 1.00 |" in section
    assert "| dialogues | 40 | 1 |" in section and "| mcq | 30 | 0 |" in section  # count per eval set


def test_stage_summary_shows_key_metrics(rendered):
    _, _, text = rendered
    rows = {r[0]: r for r in _table_rows(_section(text, "Stages"))}
    assert rows["ppo"][1:4] == ["ppo", "done", "12 s"] and "last_reward_mean=0.5" in rows["ppo"][4]
    assert "eval_loss=0.5" in rows["sft"][4]


def test_every_embedded_png_exists_and_is_valid(rendered):
    from PIL import Image

    run_dir, written, text = rendered
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(Path(link).name for link in links) == sorted(
        ["loss_curves.png", "reward_curves.png", "win_rates.png", "metrics_dialogues.png", "metrics_mcq.png",
         "metrics_kb.png"])
    for link in links:
        path = run_dir / "eval" / link
        assert path.read_bytes()[:8] == PNG_SIGNATURE, link
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.size[0] > 0 and image.size[1] > 0
    assert sorted(written[1:]) == sorted(run_dir / "eval" / link for link in links)


def test_tables_match_the_report(rendered):
    run_dir, _, _ = rendered
    out = tables(json.loads((run_dir / "eval" / "results.json").read_text()))
    columns, rows = out["comparison"]
    assert columns == ["model", *METRICS] and [r[0] for r in rows] == ["base", "sft", "ppo"]
    assert rows[1][columns.index("kb/hit_rate_1")] == 40.0
    assert out["pairwise"][1][0] == ["sft", "base", 10, 25, 5, 0, 40, 0.25]
    assert out["contamination"][1] == [["dialogues", 3, "exact", "data/x.jsonl:12", 1.0]]
    assert out["contamination_by_set"][1] == [["dialogues", 40, 1], ["mcq", 30, 0], ["kb", 20, 0]]
    columns, rows = out["vs_baseline"]
    assert dict(zip(columns, rows[0])) == {
        "model": "sft", "baseline": "base", "metric": "mcq/accuracy", "value": 35.0, "baseline_value": 25.0,
        "diff": 10.0, "low": 2.5, "high": 17.5, "n": 30, "significant": True, "verdict": "better"}
    columns, rows = out["stage_effects"]
    assert [r[0] for r in rows] == ["base", "sft", "rm", "ppo", "feedback"] and "verdict" in columns
    columns, rows = out["breakdowns"]
    assert [dict(zip(columns, r))["mean"] for r in rows] == [0.25, 0.5, 0.75]


def test_rerender_overwrites_cleanly(tmp_path):
    run_dir = make_run(tmp_path, reward_stages=False)  # fewer curves to draw three times
    first = render_report(run_dir, "eval")
    again = render_report(run_dir, "eval")
    assert first == again
    plots = run_dir / "eval" / "plots"
    # Without pairwise judgements and contamination, the old win-rate chart goes and the report says why.
    changed = {**RESULTS, "pairwise": {}, "contamination": []}
    (run_dir / "eval" / "results.json").write_text(json.dumps(changed), encoding="utf-8")
    third = render_report(run_dir, "eval")
    assert not (plots / "win_rates.png").exists() and plots / "win_rates.png" not in third
    text = (run_dir / "eval" / "report.md").read_text(encoding="utf-8")
    assert "win_rates.png" not in text and "No win-rate chart" in text
    assert "None found" in _section(text, "Contamination")
    leftovers = [p.name for p in (run_dir / "eval").rglob("*") if p.name.startswith(".")]
    assert leftovers == []  # no temp files from the atomic writes
    assert sorted(p.name for p in plots.iterdir()) == sorted(p.name for p in third[1:])


def test_run_without_reward_stages_skips_the_reward_plot(tmp_path):
    run_dir = make_run(tmp_path, reward_stages=False)
    written = render_report(run_dir, "eval")
    text = (run_dir / "eval" / "report.md").read_text(encoding="utf-8")
    assert "reward_curves.png" not in text and not (run_dir / "eval" / "plots" / "reward_curves.png").exists()
    assert "No reward curves" in text
    assert run_dir / "eval" / "plots" / "loss_curves.png" in written


def test_missing_results_names_the_file(tmp_path):
    run_dir = make_run(tmp_path)
    (run_dir / "eval" / "results.json").unlink()
    with pytest.raises(ReportError, match=re.escape(str(run_dir / "eval" / "results.json"))):
        render_report(run_dir, "eval")
    # main_report finds the stage by its manifest kind, so a lost results.json is reported, not skipped.
    with pytest.raises(ReportError, match="results.json"):
        main_report(run_dir)


@pytest.mark.parametrize("content", ['{"metrics": ', '[1, 2]', '{"metrics": {"sft": 3}}',
                                     '{"metrics": {}, "contamination": {}}'])
def test_malformed_results_names_the_file(tmp_path, content):
    run_dir = make_run(tmp_path)
    (run_dir / "eval" / "results.json").write_text(content, encoding="utf-8")
    with pytest.raises(ReportError, match=re.escape(str(run_dir / "eval" / "results.json"))):
        render_report(run_dir, "eval")


def test_main_report_renders_each_evaluate_stage(tmp_path):
    run_dir = make_run(tmp_path, reward_stages=False)
    # A second evaluation folder (e.g. copied in, no manifest) is found by its results.json.
    (run_dir / "eval_b").mkdir()
    small = {"baseline": "base", "metrics": {"base": {"mcq/accuracy": 25.0}, "sft": {"mcq/accuracy": 35.0}}}
    (run_dir / "eval_b" / "results.json").write_text(json.dumps(small), encoding="utf-8")
    written = main_report(run_dir)
    assert run_dir / "eval" / "report.md" in written and run_dir / "eval_b" / "report.md" in written
    # A results.json from before the statistics existed still renders, and says how to get them.
    older = (run_dir / "eval_b" / "report.md").read_text(encoding="utf-8")
    assert "has no stage_effects" in older and "rlmed report --recompute" in older


def test_main_report_without_evaluate_stage_says_so(tmp_path):
    run_dir = make_run(tmp_path)
    (run_dir / "eval" / "results.json").unlink()
    (run_dir / "eval" / "manifest.json").unlink()
    with pytest.raises(ReportError, match="no evaluate stage found"):
        main_report(run_dir)
    with pytest.raises(ReportError, match="no such run directory"):
        main_report(tmp_path / "nowhere")


def test_rlmed_report_command_regenerates_and_names_errors(tmp_path, capsys):
    from rlmed.cli import main

    run_dir = make_run(tmp_path)
    (run_dir / "eval" / "report.md").unlink(missing_ok=True)
    assert main(["report", str(run_dir)]) == 0
    assert str(run_dir / "eval" / "report.md") in capsys.readouterr().out
    assert (run_dir / "eval" / "report.md").exists()
    assert main(["report", str(tmp_path / "nowhere")]) == 1
    assert "no such run directory" in capsys.readouterr().err
