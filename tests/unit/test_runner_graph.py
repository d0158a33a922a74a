"""Skip / re-run rules: references form a graph; a change re-runs that stage and its dependants only."""

from __future__ import annotations

import json

import pytest

from rlmed.cli import main
from tests.conftest import write_recipe

ECHO = "tests.helpers.echo_stage"


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "c.txt").write_text("c")
    return tmp_path


def recipe(**overrides) -> dict:
    stages = [
        {"id": "a", "kind": ECHO, "inputs": {"source": "a.txt"}},
        {"id": "b", "kind": ECHO, "inputs": {"source": "$a.text"}},
        {"id": "c", "kind": ECHO, "inputs": {"source": "c.txt"}},
        {"id": "d", "kind": ECHO, "inputs": {"source": "$b.text"}},
    ]
    for stage in stages:
        stage.setdefault("args", {}).update(overrides.get(stage["id"], {}))
    return {"name": "graph", "run_dir": "run", "stages": stages}


def run(project, rec, *flags) -> tuple[int, list[str]]:
    log = project / "run" / "executions.log"
    log.unlink(missing_ok=True)
    code = main(["run", str(write_recipe(project / "r.yaml", rec)), *flags])
    return code, log.read_text().split() if log.exists() else []


def test_first_run_runs_all_and_second_run_skips_all(project):
    assert run(project, recipe()) == (0, ["a", "b", "c", "d"])
    assert run(project, recipe()) == (0, [])
    assert (project / "run" / "d" / "out.txt").read_text() == "a!!!\n"


def test_changed_arg_reruns_that_stage_and_its_dependants_only(project):
    run(project, recipe())
    assert run(project, recipe(b={"suffix": "?"})) == (0, ["b", "d"])
    assert run(project, recipe(c={"suffix": "?"}, b={"suffix": "?"})) == (0, ["c"])


def test_changed_user_file_reruns_its_readers_and_their_dependants(project):
    run(project, recipe())
    (project / "a.txt").write_text("changed")
    assert run(project, recipe()) == (0, ["a", "b", "d"])


def test_manifest_records_what_the_issue_asks(project):
    run(project, recipe())
    manifest = json.loads((project / "run" / "b" / "manifest.json").read_text())
    for key in ("id", "kind", "config_hash", "inputs", "input_hashes", "outputs", "versions", "git",
                "started_at", "ended_at", "metrics"):
        assert key in manifest, key
    assert manifest["id"] == "b" and manifest["kind"] == ECHO
    assert manifest["metrics"] == {"chars": 3}
    assert manifest["versions"]["torch"] and manifest["versions"]["rlmed"]
    # A reference is pinned by the upstream manifest's hash.
    import hashlib
    upstream = hashlib.sha256((project / "run" / "a" / "manifest.json").read_bytes()).hexdigest()
    assert manifest["input_hashes"]["source"] == [upstream]


def test_failed_stage_leaves_no_manifest_and_is_never_taken_as_done(project):
    run(project, recipe())
    code, ran = run(project, recipe(b={"fail": True}))
    assert code == 1 and ran == ["b"]
    assert not (project / "run" / "b" / "manifest.json").exists()
    assert (project / "run" / "a" / "manifest.json").exists()
    code, ran = run(project, recipe(b={"fail": True}))
    assert ran == ["b"]  # tried again, not skipped
    assert run(project, recipe()) == (0, ["b", "d"])


def test_only_runs_one_stage_and_needs_its_inputs(project):
    code, ran = run(project, recipe(), "--only", "b")
    assert code == 1 and ran == []  # a has not run: b's input does not exist
    run(project, recipe())
    assert run(project, recipe(), "--only", "b") == (0, ["b"])


def test_from_reruns_that_stage_and_every_later_one(project):
    run(project, recipe())
    assert run(project, recipe(), "--from", "b") == (0, ["b", "c", "d"])


def test_unknown_stage_in_flags(project, capsys):
    run(project, recipe())
    code, _ = run(project, recipe(), "--only", "zz")
    assert code == 1 and "--only zz: no such stage" in capsys.readouterr().err


def test_run_dir_flag_overrides_recipe(project):
    code = main(["run", str(write_recipe(project / "r.yaml", recipe())), "--run-dir", str(project / "elsewhere")])
    assert code == 0 and (project / "elsewhere" / "d" / "manifest.json").exists()
    assert not (project / "run").exists()


def test_dry_run_prints_plan_and_writes_nothing(project, capsys):
    code = main(["run", str(write_recipe(project / "r.yaml", recipe())), "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert "[run] a" in out and "[run] b" in out and "(from $a.text)" in out
    assert f"out text: {project / 'run' / 'd' / 'out.txt'}" in out
    assert not (project / "run").exists()
