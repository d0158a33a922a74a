"""mole: the experts train as a secondary SFT, routing separates two distinct tasks, the adapter and its
serving export load back through rlmed (and `rlmed export`) with the same logits."""

from __future__ import annotations

import random
import subprocess
import sys

import torch

from tests.conftest import ROOT, read_metrics, write_jsonl
from tests.stages.conftest import manifest, run_recipe

# The per-task mean gate vectors (over the answers' tokens of 24 probe rows per task) start equal (the router starts
# at zero, so every gate is uniform) and drift apart with training whatever the tasks are: two random halves of
# one mixture also end a little apart (sampling noise of the probe rows). So the real tasks must end this far
# apart (L2), and the same rows with task labels shuffled must stay under a lower ceiling. Measured here over
# seeds 1-4 after 60 steps: real tasks 0.041, 0.034, 0.030, 0.045; shuffled labels 0.007, 0.002, 0.006, 0.001.
# (With 8 probe rows per task the shuffled control reached 0.011 against 0.013 for the real tasks.)
MIN_TASK_DISTANCE = 0.018
MAX_SHUFFLED_DISTANCE = 0.012


def two_task_data(path, n: int = 96, shuffle_labels: bool = False):
    """Dosage questions answered with numbers and units, symptom questions with lists of symptoms; with
    `shuffle_labels`, the same rows with their `task` labels permuted (the labels then name no real task)."""
    rows = []
    for i in range(n):
        if i % 2:
            rows.append({"task": "dosage", "messages": [
                {"role": "user", "content": f"{i % 9 + 1}岁孩子布洛芬吃多少？"},
                {"role": "assistant", "content": f"每次{(i % 9 + 1) * 5}毫克，每6到8小时一次，24小时不超过4次。"}]})
        else:
            rows.append({"task": "symptoms", "messages": [
                {"role": "user", "content": f"手足口病第{i % 5 + 1}天有哪些表现？"},
                {"role": "assistant", "content": "发热、口腔疱疹、手足皮疹，精神差或抽搐要及时就医。"}]})
    if shuffle_labels:
        labels = [row["task"] for row in rows]
        random.Random(3).shuffle(labels)
        rows = [{**row, "task": label} for row, label in zip(rows, labels)]
    return write_jsonl(path, rows)


def mole_stage(model, data, **args) -> dict:
    return {"id": "experts", "kind": "mole", "inputs": {"model": str(model), "data": str(data)},
            "args": {"r": 4, "alpha": 8, "num_experts": 3, "routing_every": 20, "routing_rows_per_task": 24,
                     "validation_fraction": 0.0, **args},
            "trainer": {"max_steps": 60, "learning_rate": 1e-2, "per_device_train_batch_size": 8, "max_length": 128,
                        "gradient_checkpointing": False}}


def test_mole_trains_separates_tasks_and_exports(tmp_path, tiny_model):
    data = two_task_data(tmp_path / "tasks.jsonl")
    assert run_recipe(tmp_path, [mole_stage(tiny_model, data, merge=True, aux_loss_coef=0.01)]) == 0
    m = manifest(tmp_path, "experts")["metrics"]
    assert m["tasks"] == 2 and m["trainable_parameters"] < m["total_parameters"] / 5
    assert m["routing_task_distance_start"] < 1e-6  # untrained router: uniform gates for every task
    assert m["routing_task_distance_end"] >= MIN_TASK_DISTANCE, m["routing_task_distance_end"]
    routing = [r for r in read_metrics(tmp_path / "run" / "experts") if "routing/task_distance" in r]
    assert [r["step"] for r in routing] == [0, 20, 40, 60]
    for task in ("dosage", "symptoms"):
        gates = [routing[-1][f"routing/{task}/gate_{j}"] for j in range(3)]
        assert abs(sum(gates) - 1.0) < 1e-5 and routing[-1][f"routing/{task}/entropy"] > 0
    assert any("aux_loss" in r for r in read_metrics(tmp_path / "run" / "experts"))

    from rlmed.models.loading import load_causal_lm

    model_dir = tmp_path / "run" / "experts" / "model"
    assert (model_dir / "mole_config.json").exists()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        adapter = load_causal_lm(str(model_dir)).eval()(ids).logits
        served = load_causal_lm(str(tmp_path / "run" / "experts" / "merged")).eval()(ids).logits
        base = load_causal_lm(str(tiny_model)).eval()(ids).logits
    assert torch.allclose(adapter, served, atol=1e-5) and not torch.allclose(adapter, base, atol=1e-4)

    # `rlmed export` writes the same serving folder from the adapter.
    out = tmp_path / "exported"
    done = subprocess.run([sys.executable, "-m", "rlmed.cli", "export", str(model_dir), str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    with torch.no_grad():
        assert torch.allclose(load_causal_lm(str(out)).eval()(ids).logits, adapter, atol=1e-5)


def test_routing_does_not_separate_shuffled_task_labels(tmp_path, tiny_model):
    """The control for the separation above: the same rows and training, labels that name no task."""
    data = two_task_data(tmp_path / "tasks.jsonl", shuffle_labels=True)
    assert run_recipe(tmp_path, [mole_stage(tiny_model, data, aux_loss_coef=0.01)]) == 0
    m = manifest(tmp_path, "experts")["metrics"]
    assert m["tasks"] == 2 and m["routing_task_distance_start"] < 1e-6
    assert m["routing_task_distance_end"] < MAX_SHUFFLED_DISTANCE, m["routing_task_distance_end"]


def test_export_refuses_a_folder_that_is_not_a_mole_adapter(tmp_path, tiny_model):
    done = subprocess.run([sys.executable, "-m", "rlmed.cli", "export", str(tiny_model), str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "is not a MoLE adapter folder" in done.stderr
