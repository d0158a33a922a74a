"""evaluate's log-likelihood multiple choice: the option whose answer text the model finds most probable wins, the
answer is written as the template says, bad templates fail naming the row, and --recompute reads the same choice."""

from __future__ import annotations

import json

import pytest
import torch

from rlmed.cli import main
from rlmed.eval.loglik import ContinuationError, continuations
from tests.conftest import write_jsonl
from tests.stages.conftest import run_recipe

ROWS = [
    {"question": "以下哪一项是发热的常见表现？", "options": ["体温升高", "皮疹", "腹泻", "咳嗽"], "answer": "A",
     "condition": "发热"},
    {"question": "以下哪一项是手足口病的常见表现？", "options": ["便秘", "口腔疱疹", "耳痛", "鼻塞"], "answer": "B",
     "condition": "手足口病"},
    {"question": "以下哪一项是湿疹的常见表现？", "options": ["鼻塞", "耳痛", "皮肤干燥", "腹泻"], "answer": "C",
     "condition": "湿疹"},
]
TEMPLATE = "{condition}的常见表现是{option}。"


def test_continuations_fill_row_fields_option_and_letter():
    row = ROWS[0]
    assert continuations(TEMPLATE, row, row["options"])[1] == "发热的常见表现是皮疹。"
    assert continuations("{letter}. {option}", row, row["options"]) == ["A. 体温升高", "B. 皮疹", "C. 腹泻", "D. 咳嗽"]
    with pytest.raises(ContinuationError, match="names the field 'disease'"):
        continuations("{disease}：{option}", row, row["options"])


def by_hand(model_dir, row) -> list[float]:
    """Summed log-probability of each answer after the chat prompt, one forward per option, no batching."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlmed.data.chat import render_prompt
    from rlmed.eval.choice import zero_shot_prompt

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompt = render_prompt(tokenizer, [{"role": "user", "content": zero_shot_prompt(row["question"], row["options"])}])
    n = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    out = []
    for answer in continuations(TEMPLATE, row, row["options"]):
        ids = tokenizer(prompt + answer, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids).logits[0, :-1], -1)
        out.append(float(logprobs[torch.arange(n - 1, ids.shape[1] - 1), ids[0, n:]].sum()))
    return out


def eval_stage(data: str, template: str = TEMPLATE) -> dict:
    return {"id": "eval", "kind": "evaluate", "inputs": {"models": [], "data": [data]},
            "args": {"choice_scoring": "loglik", "choice_continuation": template, "batch_size": 3}}


def test_loglik_picks_the_most_probable_answer_and_recompute_reads_it(tmp_path, tiny_model):
    data = str(write_jsonl(tmp_path / "mcq.jsonl", ROWS))
    stage = eval_stage(data)
    stage["inputs"]["models"] = [str(tiny_model)]
    assert run_recipe(tmp_path, [stage]) == 0
    stage_dir = tmp_path / "run" / "eval"
    name = tiny_model.parent.name  # a model folder is named after its parent (rlmed.stages.evaluate.model_name)
    rows = [json.loads(line) for line in (stage_dir / "generations" / f"{name}.jsonl").open(encoding="utf-8")]
    expected = []
    for saved, row in zip(rows, ROWS):
        scores = by_hand(tiny_model, row)
        best = max(range(4), key=scores.__getitem__)
        expected.append("ABCD"[best] == row["answer"])
        assert saved["answer"] == f"{'ABCD'[best]}. {continuations(TEMPLATE, row, row['options'])[best]}"
    results = json.loads((stage_dir / "results.json").read_text(encoding="utf-8"))
    assert results["eval_sets"]["mcq"] == {"kind": "choice", "rows": 3, "scoring": "loglik", "continuation": TEMPLATE}
    accuracy = 100.0 * sum(expected) / len(expected)
    assert results["metrics"][name]["mcq/accuracy"] == pytest.approx(accuracy)
    assert main(["report", str(tmp_path / "run"), "--recompute"]) == 0
    again = json.loads((stage_dir / "results.json").read_text(encoding="utf-8"))
    assert again["metrics"][name]["mcq/accuracy"] == pytest.approx(accuracy)


def test_a_template_field_the_row_lacks_fails_naming_the_row(tmp_path, tiny_model, capsys):
    data = str(write_jsonl(tmp_path / "mcq.jsonl", ROWS))
    stage = eval_stage(data, template="{disease}的表现是{option}")
    stage["inputs"]["models"] = [str(tiny_model)]
    assert run_recipe(tmp_path, [stage]) == 1
    err = capsys.readouterr().err
    assert f"{data}:1:" in err and "'disease'" in err and "choice_continuation" in err
