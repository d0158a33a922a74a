"""The kto stage (trl's KTOTrainer) trains on a review's kto.jsonl through the runner, and moves the policy toward
what the doctors marked desirable; the same rows with the labels reversed move it the other way."""

from __future__ import annotations

import json

import pytest

from rlmed.artifacts import read_jsonl
from rlmed.cli import main
from rlmed.eval.loglik import score_continuations
from tests.review.conftest import careful, curt, make_run, question
from tests.review.test_review_training import label_every_task
from tests.stages.conftest import manifest, run_recipe

UNSEEN = range(100, 106)
# The bar, on the change (trained − input model) of the mean margin log p(careful) − log p(curt) (summed over the
# answer's tokens, nats) on 6 unseen prompts, 4 steps, recipe seeds 1-3 (this machine): +12.6 to +15.9 for the
# doctors' rows, −16.3 to −13.4 with every label flipped.
MIN_SHIFT = 5.0


def margin(model) -> float:
    scores = score_continuations(str(model), [question(i) for i in UNSEEN], [[careful(i), curt(i)] for i in UNSEEN],
                                 batch_size=12)
    return sum(c - r for c, r in scores) / len(scores)


@pytest.mark.slow
@pytest.mark.parametrize("reverse", [False, True], ids=["doctors", "labels_reversed"])
def test_kto_moves_the_policy_toward_what_the_doctors_marked_desirable(tmp_path, tiny_model, reverse):
    run_dir = make_run(tmp_path / "labelled", eval_rows=40)
    label_every_task(run_dir, prefer_careful=True)
    assert main(["review", "export", str(run_dir)]) == 0
    rows = read_jsonl(run_dir / "review" / "export" / "kto.jsonl")
    assert sum(r["label"] for r in rows) == 38 and sum(not r["label"] for r in rows) == 38 + 2  # + both unsafe
    data = tmp_path / "kto.jsonl"
    if reverse:
        rows = [{**r, "label": not r["label"]} for r in rows]
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    stage = {"id": "kto", "kind": "kto", "inputs": {"model": str(tiny_model), "data": str(data)},
             "args": {"validation_fraction": 0.0},
             "trainer": {"max_steps": 4, "learning_rate": 1e-3, "per_device_train_batch_size": 8,
                         "max_length": 128, "beta": 0.1}}
    assert run_recipe(tmp_path, [stage]) == 0
    metrics = manifest(tmp_path, "kto")["metrics"]
    assert metrics["train_rows"] == 78
    shift = margin(tmp_path / "run" / "kto" / "model") - margin(tiny_model)
    if reverse:
        assert shift <= -MIN_SHIFT, shift
    else:
        assert shift >= MIN_SHIFT, shift


def test_kto_rows_are_checked_and_a_bad_row_names_its_line(tmp_path):
    from rlmed.data.records import DataError
    from rlmed.data.sources import DataSource, load_sources
    from rlmed.stages.kto import kto_row

    good = [{"prompt": "孩子发烧怎么办？", "completion": "多喝水，精神差就医。", "label": True},
            {"prompt": question(1), "completion": {"role": "assistant", "content": "没事。"}, "label": False}]
    path = tmp_path / "kto.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in good), encoding="utf-8")
    rows = load_sources([DataSource(path=str(path))], kto_row, seed=0, keep_order=True).items
    assert [r["prompt"][-1]["role"] for r in rows] == ["user", "user"] and [r["label"] for r in rows] == [True, False]
    assert rows[1]["completion"] == [{"role": "assistant", "content": "没事。"}]
    for bad, reason in (({"prompt": "q", "completion": "a", "label": "yes"}, "label must be true or false"),
                        ({"prompt": "q", "completion": "a"}, "missing field 'label'"),
                        ({"prompt": [{"role": "assistant", "content": "x"}], "completion": "a", "label": True},
                         "prompt must end with the user's turn"),
                        ({"prompt": "q", "completion": {"role": "user", "content": "a"}, "label": True},
                         "completion must be the assistant's message")):
        path.write_text(json.dumps(good[0], ensure_ascii=False) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
        with pytest.raises(DataError, match=rf"kto.jsonl:2: .*{reason}"):
            load_sources([DataSource(path=str(path))], kto_row, seed=0, keep_order=True)
