"""Two nodes simulated on one machine: two launchers, a 2-host hostfile, --no_ssh, one set of artifacts."""

from __future__ import annotations

import subprocess

from tests.conftest import ROOT
from tests.distributed.conftest import ZERO3, cpt_stage, free_port, launcher_env, manifest, recipe_file, sft_stage


def test_two_node_launch_writes_one_set_of_artifacts_from_the_main_rank(tmp_path, tiny_model):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    recipe = recipe_file(tmp_path, "two_nodes", [cpt_stage(tiny_model, ZERO3, 4), sft_stage("$cpt.model", ZERO3, 4)])
    port = str(free_port())
    nodes = [
        subprocess.Popen(["deepspeed", "--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(node),
                          "--master_addr", "127.0.0.1", "--master_port", port, str(ROOT / "rlmed" / "run.py"),
                          str(recipe)], cwd=ROOT, env=launcher_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for node in (0, 1)
    ]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]

    run_dir = tmp_path / "two_nodes"
    for stage in ("cpt", "sft"):
        m = manifest(run_dir / stage)
        assert m["world_size"] == 2
        leftovers = [p.name for p in (run_dir / stage).iterdir() if p.name.endswith(".tmp")]
        assert leftovers == []
    # The main rank (node 0) reports the stages; node 1's rank stays quiet unless something goes wrong.
    assert "stage sft (sft) done in" in outputs[0] and "stage sft (sft) done in" not in outputs[1]
