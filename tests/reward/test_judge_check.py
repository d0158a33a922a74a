"""`rlmed judge-check` end to end through the CLI against a real local HTTP judge: exact agreement numbers, position
bias, failures left out, Spearman of score labels, the judge taken from a recipe, bad input named by file:line."""

from __future__ import annotations

import json
import logging
import re
import stat

import pytest
import yaml

from rlmed.cli import main
from tests.conftest import write_jsonl
from tests.reward.server import Fault, JudgeServer, free_port
from tests.reward.test_eval_pairwise import answers_of, reply

KEY_ENV = "RLMED_TEST_JUDGE_CHECK_KEY"
PROMPT = [{"role": "user", "content": "孩子发烧38.5度，精神还好，需要去医院吗？"}]
DOCTOR = "先物理降温并观察精神状态，超过三天不退或精神差请及时就医。"
GOOD = "【好】"  # the scripted judge prefers the answer that carries it, and ties when neither or both do
BROKEN = "【断】"  # every request showing an answer with it gets HTTP 500
HALF = "【半】"  # HTTP 500 only when the answer with it is shown first: one order of the pair fails
CRITERIA = ("informativeness", "coherence", "human_preference", "factual_accuracy")


@pytest.fixture(autouse=True)
def _key_and_logging(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-judge-check-test")
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    # main() adds a stderr handler once per process; bound to this test's captured stderr, it must go with it.
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def judge_block(server: JudgeServer, **extra) -> dict:
    return {"_component_": "reward.judge.LLMJudge", "model": "judge-test", "base_url": server.base_url,
            "api_key_env": KEY_ENV, "timeout_s": 5.0, "max_retries": 1, "parse_retries": 0, "max_concurrency": 4,
            **extra}


def judge_file(tmp_path, server: JudgeServer, name: str = "judge.yaml", **extra):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(judge_block(server, **extra), allow_unicode=True), encoding="utf-8")
    return path


def pair(i: int, label: str, good: str | None, annotator: str, extra: str = "") -> dict:
    a, b = f"回答甲{i}：多喝水，观察体温。{extra}", f"回答乙{i}：按时服用退烧药。"
    if good == "a":
        a += GOOD
    elif good == "b":
        b += GOOD
    return {"prompt": PROMPT, "answer_a": a, "answer_b": b, "label": label, "reference": DOCTOR,
            "annotator": annotator}


def pair_labels() -> list[dict]:
    """Ten pairs, the judge agreeing on all but rows 9 and 10, and row 1's pair labelled again (row 11).

    human \\ judge   a  b  tie       rows 1-4: label a, marker on A -> a     rows 5-7: label b, marker on B -> b
      a             5  1  0         row 8: tie, no marker -> tie            row 9: label a, marker on B -> b
      b             0  3  1         row 10: label b, no marker -> tie       row 11: row 1's pair again, label a
      tie           0  0  1
    N = 11, p_o = 9/11; rows 6, 4, 1; columns 5, 4, 2: p_e = (30 + 16 + 2)/121 = 48/121;
    kappa = (99 - 48)/(121 - 48) = 51/73. Without ties: rows 1-7, 9, 11 -> 8 of 9 agree.
    """
    rows = [pair(i, "a", "a", "dr_wang") for i in range(4)] + [pair(4, "b", "b", "dr_wang")]
    rows += [pair(5, "b", "b", "dr_li"), pair(6, "b", "b", "dr_li"), pair(7, "tie", None, "dr_li"),
             pair(8, "a", "b", "dr_li"), pair(9, "b", None, "dr_li")]
    rows.append({**rows[0], "annotator": "dr_li"})
    return rows


def prefers_good(body: dict) -> str:
    got = answers_of(body)
    if any(BROKEN in text for text in got.values()) or HALF in got["A"]:
        return Fault("status", 500)
    a, b = GOOD in got["A"], GOOD in got["B"]
    return reply("A" if a and not b else "B" if b and not a else "tie")


def check(tmp_path, labels: list[dict], *flags: str, out: str = "out") -> tuple[int, dict | None]:
    path = write_jsonl(tmp_path / "labels.jsonl", labels)
    code = main(["judge-check", str(path), *flags, "--out", str(tmp_path / out)])
    report = tmp_path / out / "judge_check.json"
    return code, json.loads(report.read_text(encoding="utf-8")) if report.exists() else None


def test_a_judge_that_agrees_except_on_known_rows_gets_exact_accuracy_and_kappa(tmp_path, judge_server, capsys):
    judge_server.script(then=prefers_good)
    code, report = check(tmp_path, pair_labels(), "--judge", str(judge_file(tmp_path, judge_server)))
    assert code == 0
    assert judge_server.count == 2 * 10  # ten distinct pairs, each in both orders; the repeated pair asked once
    p = report["pairwise"]
    assert (p["label_rows"], p["pairs"], p["scored_rows"], p["unscored_rows"]) == (11, 10, 11, 0)
    assert p["accuracy"]["value"] == pytest.approx(9 / 11) and p["accuracy"]["n"] == 11
    assert p["kappa"]["value"] == pytest.approx(51 / 73)
    assert p["accuracy_without_ties"] == {"value": pytest.approx(8 / 9), "n": 9}
    assert p["confusion"]["counts"] == [[5, 1, 0], [0, 3, 1], [0, 0, 1]]
    assert p["accuracy"]["low"] <= 9 / 11 <= p["accuracy"]["high"]
    assert p["kappa"]["low"] <= 51 / 73 <= p["kappa"]["high"]
    bias = p["position_bias"]
    assert (bias["n"], bias["rate"], bias["consistency"]) == (10, 0.0, 1.0)  # a content-driven judge
    assert p["by_annotator"]["dr_wang"] == {"n": 5, "accuracy": 1.0, "kappa": 1.0}
    assert p["by_annotator"]["dr_li"]["accuracy"] == pytest.approx(4 / 6)
    assert [r["line"] for r in p["rows"] if r["judge"] != r["human"]] == [9, 10]
    assert report["judge"]["model"] == "judge-test" and report["judge"]["rubric"] == "huatuo_zh"
    assert report["judge_stats"]["requests_sent"] == 20

    out = capsys.readouterr().out
    assert re.search(r"accuracy \(a/b/tie\)\s+81\.8%\s+\[", out) and "0.699" in out  # 51/73 = 0.6986
    md = (tmp_path / "out" / "judge_check.md").read_text(encoding="utf-8")
    assert "## Disagreements (2)" in md and "| dr_li |" in md and "Cohen's kappa" in md
    assert stat.S_IMODE((tmp_path / "out" / "judge_check.json").stat().st_mode) == 0o600

    # Run again: every verdict comes from the check's own cache (beside its report), nothing is sent.
    assert check(tmp_path, pair_labels(), "--judge", str(judge_file(tmp_path, judge_server)))[0] == 0
    assert judge_server.count == 20
    assert (tmp_path / "out" / "audit" / "judge_check.rank0.jsonl").exists()  # what was sent, without text


def test_a_judge_that_always_picks_the_first_slot_shows_full_position_bias(tmp_path, judge_server):
    judge_server.script(then=lambda body: reply("A"))
    code, report = check(tmp_path, pair_labels(), "--judge", str(judge_file(tmp_path, judge_server)))
    assert code == 0
    p = report["pairwise"]
    bias = p["position_bias"]
    assert (bias["rate"], bias["first"], bias["second"], bias["consistency"], bias["n"]) == (1.0, 10, 0, 0.0, 10)
    assert bias["low"] == pytest.approx(0.7225, abs=1e-4) and bias["high"] == pytest.approx(1.0)  # Wilson
    assert p["first_position_rate"] == 1.0
    # Both orders pick A, i.e. different answers: the judge's verdict is a tie everywhere. Only the one human tie
    # agrees (accuracy 1/11), and a judge that always says the same thing carries no information: kappa 0.
    assert p["confusion"]["counts"] == [[0, 0, 6], [0, 0, 4], [0, 0, 1]]
    assert p["accuracy"]["value"] == pytest.approx(1 / 11) and p["kappa"]["value"] == pytest.approx(0.0)


def test_pairs_the_judge_failed_on_are_unscored_and_left_out(tmp_path, judge_server, capsys):
    judge_server.script(then=prefers_good)
    labels = pair_labels()[:10]  # without the repeated pair: p_o = 8/10, p_e = 38/100, kappa = 0.42/0.62 = 21/31
    labels.insert(3, pair(20, "a", "a", "dr_wang", extra=BROKEN))  # both orders fail: line 4
    labels.append(pair(21, "b", "b", "dr_li", extra=BROKEN))  # line 12
    labels.append(pair(22, "b", "a", "dr_li", extra=HALF))  # order (A, B) fails, (B, A) answers: line 13
    code, report = check(tmp_path, labels, "--judge", str(judge_file(tmp_path, judge_server)))
    assert code == 0
    p = report["pairwise"]
    assert (p["label_rows"], p["scored_rows"], p["unscored_rows"], p["unscored_pairs"]) == (13, 10, 3, 3)
    assert p["accuracy"]["value"] == pytest.approx(0.8) and p["accuracy"]["n"] == 10  # as if the three were absent
    assert p["kappa"]["value"] == pytest.approx(21 / 31)
    assert sum(map(sum, p["confusion"]["counts"])) == 10
    assert p["position_bias"]["n"] == 10 and p["position_bias"]["unscored"] == 3
    unscored = {r["line"]: r for r in p["rows"] if r["judge"] is None}
    assert sorted(unscored) == [4, 12, 13]
    assert all("500" in r["errors"][0] for r in unscored.values())
    assert unscored[13]["verdicts"][0] is None and unscored[13]["verdicts"][1] == "b"  # one order did answer
    # 20 good requests; the broken pairs: 2 orders x 2 attempts each; the half pair: 2 attempts + 1 answer.
    assert judge_server.count == 20 + 2 * 2 * 2 + 3
    assert "Unscored (3" in (tmp_path / "out" / "judge_check.md").read_text(encoding="utf-8")
    assert re.search(r"unscored\s+3\s+13\s+label rows \(3 of 13 pairs\)", capsys.readouterr().out)


def test_a_judge_that_gives_no_verdict_at_all_exits_1(tmp_path, capsys):
    down = JudgeServer()  # never started: its port refuses
    down.base_url = f"http://127.0.0.1:{free_port()}/v1"
    code, report = check(tmp_path, pair_labels()[:3], "--judge", str(judge_file(tmp_path, down, max_retries=0)))
    assert code == 1
    assert report["pairwise"]["scored_rows"] == 0 and report["pairwise"]["accuracy"]["value"] is None
    err = capsys.readouterr().err
    assert "no verdict on any of the 3 label rows" in err and "connection error" in err


def score_reply(reverse: bool):
    """A pointwise judge scoring every criterion by the answer's "质量N" (N, or 11 - N when reversed)."""
    def respond(body: dict) -> str:
        answer = re.search(r'kind="answer" id="1">\n(.*?)\n</', body["messages"][1]["content"], flags=re.S).group(1)
        quality = int(re.search(r"质量(\d+)", answer).group(1))
        value = 11 - quality if reverse else quality
        return json.dumps({"scores": {c: value for c in CRITERIA}, "overall": value, "rationale": "按参考评估"},
                          ensure_ascii=False)
    return respond


def score_labels() -> list[dict]:
    rows = [{"prompt": "宝宝咳嗽三天，怎么办？", "answer": f"建议观察，质量{q}。", "reference": DOCTOR,
             "scores": {c: q for c in CRITERIA}} for q in (2, 5, 5, 8, 9)]  # a tie among the human scores
    rows.append({"prompt": PROMPT, "answer": "多喝水，质量7。", "scores": {"informativeness": 7, "overall": 7}})
    return rows


@pytest.mark.parametrize("reverse, rho", [(False, 1.0), (True, -1.0)])
def test_score_labels_give_spearman_per_criterion(tmp_path, judge_server, capsys, reverse, rho):
    judge_server.script(then=score_reply(reverse))
    code, report = check(tmp_path, score_labels(), "--judge", str(judge_file(tmp_path, judge_server)))
    assert code == 0 and judge_server.count == 6
    printed = re.findall(r"spearman (\w+)\s+(-?\d\.\d{3})\s+(\d+)", capsys.readouterr().out)
    assert printed == [(c, f"{rho:.3f}", "6" if c == "informativeness" else "5") for c in CRITERIA] + \
        [("overall", f"{rho:.3f}", "6")]  # rubric order, overall last
    s = report["scores"]
    assert (s["label_rows"], s["scored_rows"], s["unscored_rows"]) == (6, 6, 0)
    assert sorted(s["criteria"]) == sorted(CRITERIA)  # the json's keys are sorted; the table keeps rubric order
    assert s["criteria"]["informativeness"]["n"] == 6 and s["criteria"]["coherence"]["n"] == 5
    for c in CRITERIA:
        assert s["criteria"][c]["spearman"] == pytest.approx(rho)
    # Overall: five rows scoring every criterion (their mean) and one explicit "overall".
    assert s["overall"]["n"] == 6 and s["overall"]["spearman"] == pytest.approx(rho)
    assert s["overall"]["weighted_kappa"] is None and "mean" in s["overall"]["kappa_note"]
    kappa = s["criteria"]["coherence"]["weighted_kappa"]
    assert kappa == pytest.approx(1.0) if not reverse else kappa < 0
    row = s["rows"][0]
    assert row["judge"]["coherence"] == (9 if reverse else 2) and row["human"]["coherence"] == 2


def test_the_judge_of_a_recipe_stage_is_used_with_the_runs_cache(tmp_path, judge_server, monkeypatch):
    judge_server.script(then=prefers_good)
    monkeypatch.chdir(tmp_path)
    recipe = {"name": "check", "run_dir": str(tmp_path / "run"), "stages": [
        {"id": "feedback", "kind": "ai_feedback", "inputs": {"model": "absent/model", "prompts": "absent.jsonl"},
         "reward": {"_component_": "reward.composite.Composite", "sources": [
             {**judge_block(judge_server), "weight": 2.0, "name": "judge"},
             {"_component_": "reward.similarity.ReferenceSimilarity", "weight": 1.0}]}},
        {"id": "eval", "kind": "evaluate", "inputs": {"models": ["absent/model"], "data": ["absent.jsonl"]},
         "args": {"judge": judge_block(judge_server)}}]}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    labels = pair_labels()[:4]
    # The evaluate stage's pairwise judge; the data files the recipe names need not exist for a judge check.
    code, report = check(tmp_path, labels, "--recipe", str(path), "--stage", "eval")
    assert code == 0 and judge_server.count == 8
    assert report["judge"]["source"].endswith("stage 'eval': args.judge")
    assert (tmp_path / "run" / "judge_cache").is_dir() and (tmp_path / "run" / "audit").is_dir()
    # The judge inside feedback's Composite is found (its weight and name are the Composite's): same judge, same
    # requests, all served from the run's cache.
    code, report = check(tmp_path, labels, "--recipe", str(path), "--stage", "feedback", out="out2")
    assert code == 0 and judge_server.count == 8 and report["pairwise"]["accuracy"]["value"] == 1.0
    assert report["judge"]["source"].endswith("stage 'feedback': reward")


def test_bad_labels_exit_2_naming_every_file_and_line(tmp_path, judge_server, capsys):
    path = tmp_path / "labels.jsonl"
    good = json.dumps(pair(0, "a", "a", "dr_wang"), ensure_ascii=False)
    lines = [good,
             json.dumps({**pair(1, "a", "a", "x"), "label": "c"}, ensure_ascii=False),
             "{not json",
             json.dumps({"prompt": "问题", "answer": "回答", "scores": {"coherence": 5}}, ensure_ascii=False),
             json.dumps({k: v for k, v in pair(2, "b", "b", "x").items() if k != "answer_b"}, ensure_ascii=False),
             json.dumps({**pair(3, "b", "b", "x"), "referense": DOCTOR}, ensure_ascii=False),
             json.dumps({**pair(4, "b", "b", "x"), "prompt": [{"role": "assistant", "content": "你好"}]},
                        ensure_ascii=False)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code = main(["judge-check", str(path), "--judge", str(judge_file(tmp_path, judge_server))])
    assert code == 2 and judge_server.count == 0
    err = capsys.readouterr().err
    assert "7 problem" not in err and "6 problem(s)" in err
    for line, words in ((2, "'a', 'b' or 'tie'"), (3, "JSON"), (4, "one file holds one kind"),
                        (5, "missing field 'answer_b'"), (6, "did you mean 'reference'"), (7, "expected role 'user'")):
        assert re.search(rf"{re.escape(str(path))}:{line}: .*{re.escape(words)}", err), (line, err)
    assert not (tmp_path / "labels_judge_check").exists()


def test_score_labels_must_name_the_rubrics_criteria(tmp_path, judge_server, capsys):
    rows = [*score_labels()[:2], {"prompt": "问题", "answer": "回答", "scores": {"coherance": 5}}]
    code, _ = check(tmp_path, rows, "--judge", str(judge_file(tmp_path, judge_server)))
    assert code == 2 and judge_server.count == 0
    err = capsys.readouterr().err
    assert re.search(r"labels\.jsonl:3: scores name 'coherance'.*did you mean 'coherence'", err)


def test_a_judge_the_host_policy_refuses_exits_2_before_anything_is_sent(tmp_path, judge_server, capsys):
    path = tmp_path / "judge.yaml"
    path.write_text(yaml.safe_dump({**judge_block(judge_server), "base_url": "http://judge.example.com/v1"}),
                    encoding="utf-8")
    code, report = check(tmp_path, pair_labels()[:2], "--judge", str(path))
    assert code == 2 and report is None
    err = capsys.readouterr().err
    assert f"{path}: judge.base_url" in err and "unencrypted" in err


def test_judge_blocks_that_name_no_single_judge_exit_2(tmp_path, judge_server, capsys):
    path = tmp_path / "judge.yaml"
    path.write_text(yaml.safe_dump({"_component_": "reward.similarity.ReferenceSimilarity"}), encoding="utf-8")
    assert check(tmp_path, pair_labels()[:2], "--judge", str(path))[0] == 2
    assert "holds 0 LLM judges" in capsys.readouterr().err
    path.write_text(yaml.safe_dump({**judge_block(judge_server), "modle": "x"}), encoding="utf-8")
    assert check(tmp_path, pair_labels()[:2], "--judge", str(path))[0] == 2
    assert "modle: unknown argument" in capsys.readouterr().err
    assert check(tmp_path, pair_labels()[:2], "--recipe", str(path))[0] == 2
    assert "--recipe needs --stage" in capsys.readouterr().err
