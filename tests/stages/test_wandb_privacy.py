"""Patient text reaching W&B is de-identified: PPO's samples table and the evaluation report's tables carry a
phone and an ID number into the stage's own tables/*.jsonl (they stay on this machine) but only placeholders
into the W&B run files; unmasked tables are refused unless W&B is offline; `off` sends no tables; a pattern
written for the stage's judge masks W&B too. Real W&B in offline mode, the run files read byte by byte."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlmed.tracking import StageRun, WandbSettings
from tests.conftest import write_jsonl
from tests.stages.conftest import run_recipe, sample

PHONE = "13800138000"
ID_NUMBER = "110101201903051234"  # region 110101, born 2019-03-05: a plausible child's resident ID
PLACEHOLDERS = ("[电话]", "[身份证号]")


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def wandb_bytes(run_dir: Path) -> bytes:
    """Everything W&B wrote for the run (the .wandb record files, table JSON, logs): what a sync uploads."""
    files = [p for p in sorted((run_dir / "wandb").rglob("*")) if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files), "no W&B run was written"
    return b"".join(p.read_bytes() for p in files)


def assert_masked(run_dir: Path) -> None:
    written = wandb_bytes(run_dir)
    for identifier in (PHONE, ID_NUMBER):
        assert identifier.encode() not in written
    for placeholder in PLACEHOLDERS:
        assert placeholder.encode() in written, placeholder  # the rows did arrive, masked


def test_ppo_samples_table_reaches_wandb_masked(tmp_path, tiny_model):
    from tests.stages.test_ppo import brevity, ppo_stage

    prompts = write_jsonl(tmp_path / "patients.jsonl", [
        {"messages": [{"role": "user", "content": f"孩子发烧{day}天了，我的电话{PHONE}，身份证号{ID_NUMBER}，怎么办？"},
                      {"role": "assistant", "content": f"多喝水，体温超过38.5℃用退烧药；复诊请打{PHONE}。"}]}
        for day in range(1, 5)])
    stage = ppo_stage(tiny_model, brevity(), num_rollouts=1, heldout_prompts=0, samples_logged=4, max_prompts=4,
                      rollout_batch_size=4, generation_batch_size=4, max_new_tokens=8, ppo_epochs=1)
    stage["inputs"]["prompts"] = str(prompts)
    stage["trainer"]["per_device_train_batch_size"] = 4
    assert run_recipe(tmp_path, [stage], wandb={"project": "rlmed-test"}) == 0
    # The local table keeps the text as it was (it never leaves the machine) ...
    local = (tmp_path / "run" / "ppo" / "tables" / "samples.jsonl").read_text(encoding="utf-8")
    assert PHONE in local and ID_NUMBER in local
    # ... W&B gets prompt and reference masked; clinical numbers such as 38.5℃ stay readable.
    assert_masked(tmp_path / "run")
    assert "38.5℃".encode() in wandb_bytes(tmp_path / "run")


def test_evaluate_report_tables_reach_wandb_masked(tmp_path, tiny_model):
    # A free-text field the report breaks down by (a user's choice of breakdown_by) puts row text in a table.
    data = write_jsonl(tmp_path / "dialogues.jsonl", [
        {"prompt": "宝宝咳嗽三天了怎么办？", "reference": "多喝水，气促就医。", "note": f"家长电话{PHONE}"},
        {"prompt": "孩子发烧要紧吗？", "reference": "超过38.5℃可退热。", "note": f"身份证{ID_NUMBER}"}])
    stage = {"id": "eval", "kind": "evaluate", "inputs": {"models": [str(tiny_model)], "data": [str(data)]},
             "args": {"max_new_tokens": 4, "breakdown_by": ["note"]}}
    assert run_recipe(tmp_path, [stage], wandb={"project": "rlmed-test"}) == 0
    local = (tmp_path / "run" / "eval" / "tables" / "breakdowns.jsonl").read_text(encoding="utf-8")
    assert PHONE in local and ID_NUMBER in local
    assert_masked(tmp_path / "run")


@pytest.mark.parametrize("mode", ["online", None])
def test_raw_text_tables_are_refused_unless_wandb_is_offline(tmp_path, capsys, mode):
    wandb = {"project": "rlmed-test", "text_tables": "raw", **({"mode": mode} if mode else {})}
    stage = {"id": "base", "kind": "tiny_model", "inputs": {"texts": sample("corpus.jsonl")}}
    assert run_recipe(tmp_path, [stage], wandb=wandb) == 2  # refused when the recipe loads, before any stage
    err = capsys.readouterr().err
    assert "1 problem(s)" in err and "wandb.text_tables: raw" in err and "wandb.mode: offline" in err, err
    # A run built in code is held to the same rule, before anything is sent.
    settings = WandbSettings(project="rlmed-test", mode="offline", text_tables="raw")
    settings.mode = mode
    with pytest.raises(ValueError, match="wandb.text_tables: raw"):
        StageRun(settings, "t", "s", "ppo", {}, tmp_path)
    assert not (tmp_path / "wandb").exists()


def test_off_sends_no_tables_raw_offline_sends_them_as_they_are_and_judge_patterns_apply(tmp_path):
    row = {"prompt": f"电话{PHONE}，身份证{ID_NUMBER}，MRN-778899", "reward": 0.5}
    # The stage's judge adds a hospital's own record-number pattern: W&B must mask it too.
    judge = {"_component_": "reward.judge.LLMJudge", "model": "m", "deid_patterns": {"mrn": r"MRN-\d{6}"}}
    for mode in ("masked", "off", "raw"):
        run_dir = tmp_path / mode
        settings = WandbSettings(project="rlmed-test", mode="offline", text_tables=mode)
        run = StageRun(settings, "t", "ppo", "ppo", {"reward": {"_component_": "reward.composite.Composite",
                                                               "sources": [judge]}}, run_dir)
        run.log_table("samples", [row], step=1)
        run.log({"last_prompt": row["prompt"]}, step=1)
        run.finish({"first_prompt": row["prompt"]})
        written = wandb_bytes(run_dir)
        tables = list(run_dir.rglob("*.table.json"))
        if mode == "raw":
            assert len(tables) == 1 and PHONE.encode() in tables[0].read_bytes()
            continue
        assert len(tables) == (0 if mode == "off" else 1)
        for identifier in (PHONE, ID_NUMBER, "MRN-778899"):
            assert identifier.encode() not in written, (mode, identifier)
        assert b"[mrn]" in written
