"""bench.data: the padding measure on a hand-computed batch, and a small run of the whole benchmark."""

from __future__ import annotations

import json

import torch

from bench.data import main, make_dialogues, padding_fraction


def test_padding_fraction_of_a_hand_computed_batch():
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    examples = [{"input_ids": [1, 2, 3, 4]}, {"input_ids": [5]}, {"input_ids": [6, 7]}]
    padded = DataCollatorForLanguageModeling(pad_token_id=0)(examples)
    assert padded["input_ids"].shape == (3, 4)  # 12 positions, 7 tokens: 5 are padding
    assert padding_fraction([padded], [examples]) == 5 / 12
    free = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(examples)
    assert free["input_ids"].shape == (1, 7) and padding_fraction([free], [examples]) == 0.0
    # Over several batches the fraction is of all positions: (5 + 0 padding) / (12 + 2).
    pair = [{"input_ids": [8]}, {"input_ids": [9]}]
    assert padding_fraction([padded, {"input_ids": torch.zeros(2, 1)}], [examples, pair]) == 5 / 14
    assert padding_fraction([], []) == 0.0


def test_dialogues_are_seeded_and_varied():
    a, b = make_dialogues(40, seed=3), make_dialogues(40, seed=3)
    assert a == b and a != make_dialogues(40, seed=4)
    turns = {sum(m["role"] == "assistant" for m in d) for d in a}
    assert turns == {1, 2, 3}
    assert all(d[-1]["role"] == "assistant" for d in a)


def test_small_run_writes_both_paths_figures(tmp_path, tiny_model):
    out = tmp_path / "data.json"
    # 32 rows in batches of 2: transformers' sampler groups mega-batches of min(32 // (2·4), 50) = 4 batches.
    main(["--n", "32", "--batch-size", "2", "--repeats", "1", "--steps", "1", "--max-length", "256",
          "--mean-chars", "120", "--model-dir", str(tiny_model), "--out", str(out)])
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["median_rows_per_s"]["rlmed"] > 0 and result["median_rows_per_s"]["trl"] > 0
    assert result["rows_per_s_ratio_rlmed_over_trl"] > 0 and result["same_input_ids"] is True
    for figures in result["padding"].values():
        assert 0.0 <= figures["padding_fraction"] <= 1.0
    assert result["padding"]["rlmed_packed_padding_free"]["padding_fraction"] == 0.0
    assert result["padding"]["rlmed_unpacked_padded"]["padding_fraction"] > 0.0
    assert result["padding"]["trl_packed_padding_free"]["trained_token_fraction"] == 1.0  # trl: every token
    assert 0.0 < result["padding"]["rlmed_packed_padding_free"]["trained_token_fraction"] < 1.0  # rlmed: assistant
    assert result["training_steps"]["packed_padding_free"]["real_tokens_per_s"] > 0
    # Length-grouped batches (train_sampling_strategy: group_by_length) hold rows of similar lengths: less padding.
    grouped = result["padding"]["rlmed_unpacked_length_grouped"]
    assert grouped["rows"] == result["padding"]["rlmed_unpacked_padded"]["rows"]
    assert grouped["padding_fraction"] < result["padding"]["rlmed_unpacked_padded"]["padding_fraction"]
    assert result["training_steps"]["unpacked_length_grouped"]["real_tokens_per_s"] > 0
