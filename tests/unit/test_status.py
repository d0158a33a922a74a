"""`rlmed status` and `rlmed runs`: each stage's state read from what the runner leaves in its folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from rlmed.cli import main
from tests.conftest import write_recipe

ECHO = "tests.helpers.echo_stage"


def recipe(fail_b: bool = False) -> dict:
    return {"name": "st", "run_dir": "run", "stages": [
        {"id": "a", "kind": ECHO, "inputs": {"source": "a.txt"}},
        {"id": "b", "kind": ECHO, "inputs": {"source": "$a.text"}, "args": {"fail": fail_b}},
        {"id": "c", "kind": ECHO, "inputs": {"source": "$b.text"}},
    ]}


def lines_of(output: str) -> dict[str, str]:
    return {line.split()[0]: line for line in output.splitlines()[1:]}


def test_status_shows_done_failed_and_not_run_stages(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text("a")
    path = write_recipe(tmp_path / "r.yaml", recipe(fail_b=True))
    assert main(["run", str(path)]) == 1
    capsys.readouterr()
    assert main(["status", str(path)]) == 0
    shown = lines_of(capsys.readouterr().out)
    assert " done " in shown["a"] and "chars=" not in shown["a"]  # echo's metric is not a key metric
    assert " failed " in shown["b"] and "RuntimeError: asked to fail" in shown["b"]
    assert " not run" in shown["c"]
    assert not (tmp_path / "run" / "b" / "running.json").exists()
    # Run again and succeed: the failure record goes.
    path = write_recipe(tmp_path / "r.yaml", recipe())
    assert main(["run", str(path)]) == 0
    capsys.readouterr()
    assert main(["status", "run"]) == 0  # the folder alone: stages in the order they started
    shown = lines_of(capsys.readouterr().out)
    assert list(shown) == ["a", "b", "c"] and all(" done " in line for line in shown.values())


def test_a_killed_stage_shows_interrupted_with_its_checkpoint_and_a_live_one_running(tmp_path, capsys):
    stage = tmp_path / "run" / "sft"
    (stage / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    (stage / "checkpoints" / "checkpoint-4" / "trainer_state.json").write_text("{}")
    (stage / "checkpoints" / "checkpoint-8").mkdir()  # no trainer_state.json: cut off while saving
    (stage / "started.json").write_text("{}")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    (stage / "running.json").write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid}))
    assert main(["status", str(tmp_path / "run")]) == 0
    line = lines_of(capsys.readouterr().out)["sft"]
    assert " interrupted " in line and "would resume from checkpoints/checkpoint-4" in line

    (stage / "running.json").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    assert main(["status", str(tmp_path / "run")]) == 0
    line = lines_of(capsys.readouterr().out)["sft"]
    assert f"running on {socket.gethostname()} (pid {os.getpid()})" in line


def test_runs_lists_each_run_folder_with_its_states(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text("a")
    for name in ("one", "two"):
        rec = recipe(fail_b=name == "two")
        rec["run_dir"] = f"runs/{name}"
        main(["run", str(write_recipe(tmp_path / f"{name}.yaml", rec))])
    capsys.readouterr()
    assert main(["runs"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2
    assert out[0].startswith("runs/one") and "3 done" in out[0]
    assert out[1].startswith("runs/two") and "1 done, 1 failed" in out[1]


def test_status_of_something_that_is_not_a_run_is_a_clear_error(tmp_path, capsys):
    assert main(["status", str(tmp_path / "nowhere")]) == 2
    assert "is neither a run folder nor a recipe file" in capsys.readouterr().err
