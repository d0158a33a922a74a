"""Data-source options travel through `$stage.output` references, and skipped rows reach the manifest."""

from __future__ import annotations

import json

from tests.conftest import write_jsonl
from tests.stages.conftest import manifest, run_recipe, sample


def test_kb_output_with_column_and_skip_options_feeds_pretrain_and_bad_rows_are_counted(tmp_path, tiny_model):
    table = write_jsonl(tmp_path / "drugs.jsonl", [
        {"name": "布洛芬", "uses": ["发热", "疼痛"]},
        {"name": "对乙酰氨基酚", "uses": ["发热"]},
    ])
    corpus = tmp_path / "corpus.jsonl"
    good = [json.dumps({"text": t}, ensure_ascii=False) for t in ("小儿发热时要注意补液。", "手足口病多见于五岁以下儿童。")]
    # line 2: invalid JSON; line 3: empty text. Both are bad rows, skipped and counted.
    lines = [good[0], "{not json", json.dumps({"text": ""}), good[1]]
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    stages = [
        {"id": "kb", "kind": "kb_instructions",
         "inputs": {"table": {"path": str(table), "columns": {"drug": "name", "indications": "uses"}}},
         "args": {"templates": [{"question": "{drug}的适应症是什么？", "answer": "{drug}用于{indications}。"}]}},
        {"id": "cpt", "kind": "pretrain",
         "inputs": {"model": str(tiny_model),
                    "corpus": [{"path": str(corpus), "on_bad_rows": "skip"}, sample("corpus.jsonl")],
                    "instructions": {"path": "$kb.instructions", "on_bad_rows": "skip"}},
         "args": {"max_length": 32, "validation_fraction": 0},
         "trainer": {"max_steps": 2}},
    ]
    assert run_recipe(tmp_path, stages) == 0
    kb_rows = [json.loads(line) for line in
               (tmp_path / "run" / "kb" / "instructions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {r["instruction"] for r in kb_rows} == {"布洛芬的适应症是什么？", "对乙酰氨基酚的适应症是什么？"}

    m = manifest(tmp_path, "cpt")
    assert m["metrics"]["bad_rows"] == 2
    assert m["metrics"]["bad_rows_by_source"] == {str(corpus): 2}
    assert any(f"{corpus}:2: invalid JSON" in reason for reason in m["metrics"]["bad_row_reasons"])
    resolved = m["inputs"]["instructions"][0]
    assert resolved["on_bad_rows"] == "skip" and resolved["path"].endswith("kb/instructions.jsonl")
    assert m["metrics"]["train_documents"] == 2 + 600 + 2
