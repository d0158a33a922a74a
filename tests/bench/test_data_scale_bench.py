"""bench.data --scale: a small run of the whole benchmark (two sizes, workers on), checked for its structure and
the sanity of its figures, not its speed."""

from __future__ import annotations

import json

from bench.data import main


def test_small_run_measures_every_path_at_both_sizes(tmp_path, tiny_model):
    """trl's path at the smaller size only (--trl-up-to), as the default run at 1M does it."""
    out = tmp_path / "data_scale.json"
    main(["--scale", "--sizes", "1200,400", "--num-proc", "2", "--mean-chars", "120", "--model-dir",
          str(tiny_model), "--tmp-dir", str(tmp_path), "--out", str(out), "--trl-up-to", "400"])
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["sizes"] == [400, 1200] and set(result["results"]) == {"400", "1200"}
    assert result["machine"]["cpus"] >= 1 and result["machine"]["platform"]
    for n, figures in result["results"].items():
        runs = figures["runs"]
        assert set(runs) == ({"rlmed_first", "rlmed_second", "trl"} if n == "400" else {"rlmed_first", "rlmed_second"})
        first, second, trl = runs["rlmed_first"], runs["rlmed_second"], runs.get("trl")
        # Every dialogue is prepared: the split's two parts (5% held out), and trl's whole file.
        assert first["train_rows"] + first["eval_rows"] == int(n) == second["rows"]
        assert first["trainer_skips_preparation"] and first["trainer_read"] == second["trainer_read"]
        assert first["eval_rows"] == int(int(n) * 0.05)
        # The first process built the entries (source rows, train and validation tokens), the second reused them.
        # (the validation split reuses the tokens of the whole source, tokenised once for the training split)
        assert [e["action"] for e in first["events"]] == ["prepared", "prepared", "reused"]
        assert figures["second_all_reused"] and [e["action"] for e in second["events"]] == ["reused"] * 3
        assert {e["entry"] for e in first["events"]} == {e["entry"] for e in second["events"]}
        assert set(first["num_proc_by_entry"].values()) == {2}
        for run in runs.values():
            fig = run["prepare"]
            assert fig["seconds"] > 0 and fig["rows_per_s"] > 0
            assert fig["maxrss_self"] >= run["startup"]["maxrss_self"] > 0
            assert fig["maxrss_self_plus_children"] == fig["maxrss_self"] + fig["maxrss_children"]
        assert first["prepare"]["maxrss_children"] > 0  # the map's workers, finished and counted
        assert figures["reuse_time_ratio"] > 0
        if trl is None:
            assert "rows_per_s_ratio_rlmed_over_trl" not in figures
            continue
        assert trl["rows"] == int(n) and trl["num_proc"] == 2
        # Both sides end with the same rows and tokens: rlmed's cached pass truncated as SFTTrainer truncates trl's.
        assert first["read"]["tokens"] == trl["read"]["tokens"] > 0
        assert figures["same_tokens_as_trl"] and first["trainer_read"] == trl["read"]
        assert figures["rows_per_s_ratio_rlmed_over_trl"] > 0
    checks = {c["name"]: c for c in result["checks"]}
    assert len(checks) == 10
    for check in checks.values():
        assert check["pass"] in (True, False, None) and check["target"]
    assert checks["second preparation reused every entry (events.jsonl), every size"]["pass"] is True
    rss = checks["peak RSS, rlmed first preparation, 400 (self + largest worker, ru_maxrss)"]
    assert rss["value"] == result["results"]["400"]["runs"]["rlmed_first"]["prepare"]["maxrss_self_plus_children"]
    growth = checks["peak RSS growth 400 -> 1200 (self + largest worker, ru_maxrss)"]["value"]
    small, large = (result["results"][n]["runs"]["rlmed_first"]["prepare"] for n in ("400", "1200"))
    assert growth == large["maxrss_self_plus_children"] / small["maxrss_self_plus_children"] - 1
