"""The doctors' exported pairs train a reward model through the runner, mixed with AI-feedback pairs by weight
(HuatuoGPT's mixed feedback), and the direction the doctors chose is the direction the model learns."""

from __future__ import annotations

import re

import pytest

from reward.base import Sample, score_sync
from reward.model import RewardModel
from rlmed.cli import main
from rlmed.review.store import ReviewStore, db_path
from rlmed.review.tasks import assign, build_tasks, view
from tests.review.conftest import careful, curt, make_run, question
from tests.stages.conftest import manifest, run_recipe

EVAL_ROWS = 40
# The learning bar, from the held-out margin score(careful) − score(curt) over 6 unseen prompts, 8 steps, recipe
# seeds 1-3 (this machine): doctors preferring the careful answer gave mean margins 2.80-3.22, every prompt the
# right way; the control, the same tasks labelled the other way round, gave −2.99 to −2.64, every prompt reversed.
MIN_MARGIN = 1.0


def label_every_task(run_dir, prefer_careful: bool) -> None:
    """One doctor labels every task through the store the server writes with (the HTTP path has its own tests)."""
    tasks, _ = build_tasks(run_dir, sources=["evaluate"])
    store = ReviewStore(db_path(run_dir))
    store.setup(tasks, assign([t.id for t in tasks], ["alice"], 0.0, 0), {"seed": 0})
    for task in tasks:
        shown = view(task, [])["answers"]
        careful_side = "a" if "就医" in shown["A"] else "b"
        verdict = careful_side if prefer_careful else {"a": "b", "b": "a"}[careful_side]
        if "<script>" in shown["A"] + shown["B"]:
            verdict = "unsafe"
        store.save_label("alice", task.id, verdict, None, None, None)
    store.close()


def held_out_margins(model_dir) -> list[float]:
    source = RewardModel(str(model_dir))
    unseen = range(100, 106)
    samples = [Sample(prompt=question(i), completion=text) for i in unseen for text in (careful(i), curt(i))]
    values = [s.value for s in score_sync(source, samples)]
    return [values[k] - values[k + 1] for k in range(0, len(values), 2)]


@pytest.mark.slow
@pytest.mark.parametrize("prefer_careful", [True, False], ids=["doctors", "doctors_reversed"])
def test_a_reward_model_learns_what_the_doctors_chose_from_the_export(tmp_path, tiny_model, prefer_careful, capsys):
    run_dir = make_run(tmp_path / "labelled", eval_rows=EVAL_ROWS)
    label_every_task(run_dir, prefer_careful)
    assert main(["review", "export", str(run_dir)]) == 0
    exported = run_dir / "review" / "export" / "pairs.jsonl"
    assert re.search(rf"{EVAL_ROWS - 2} pairs", capsys.readouterr().out)  # less the same-answer and unsafe rows
    pairs = [{"path": str(exported), "weight": 3}]
    if prefer_careful:  # the recipe's mixed feedback: doctor pairs weighted 3 to 1 against AI-feedback pairs
        pairs.append({"path": str(run_dir / "feedback" / "pairs.jsonl"), "weight": 1})
    stage = {"id": "rm", "kind": "reward_model", "inputs": {"model": str(tiny_model), "pairs": pairs},
             "args": {"validation_fraction": 0.1},
             "trainer": {"max_steps": 8, "learning_rate": 2e-3, "per_device_train_batch_size": 8,
                         "max_length": 128}}
    assert run_recipe(tmp_path, [stage]) == 0
    log = (tmp_path / "run" / "rm" / "stage.log").read_text(encoding="utf-8")
    if prefer_careful:
        # 38 doctor + 4 AI pairs = 42 rows, shared 3:1 → 31.5 → 32 doctor rows and 10 AI rows (4 repeated).
        assert re.search(rf"data {re.escape(str(exported))}: 38 rows, 32 used", log), log
        assert re.search(r"feedback/pairs.jsonl: 4 rows, 10 used", log), log
    metrics = manifest(tmp_path, "rm")["metrics"]
    assert metrics["train_pairs"] + metrics["eval_pairs"] == (42 if prefer_careful else 38)
    margins = held_out_margins(tmp_path / "run" / "rm" / "model")
    mean = sum(margins) / len(margins)
    if prefer_careful:
        assert mean >= MIN_MARGIN and all(m > 0 for m in margins), margins
    else:  # the control: what the doctors chose, not the answers themselves, sets the direction
        assert mean <= -MIN_MARGIN and all(m < 0 for m in margins), margins
