"""The sft stage's cached tokenisation does SFTTrainer's truncation itself and tells the trainer to skip its
preparation: the trainer then trains on exactly the rows and tokens its own pass would have given."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM
from trl import SFTConfig, SFTTrainer

from rlmed.data.prepared import DataCache
from rlmed.data.sources import DataSource, dialogue, load_sources
from rlmed.data.tokenized import sft_truncation, tokenize_all
from rlmed.stages.sft import ready_sets
from tests.conftest import SAMPLE, write_jsonl

MAX_LENGTH = 128


def rows_of(dataset) -> list[tuple[list[int], list[int]]]:
    return [(list(r["input_ids"]), list(r["labels"])) for r in dataset]


def config(tmp_path, **fields) -> SFTConfig:
    return SFTConfig(**{"output_dir": str(tmp_path / "out"), "report_to": [], "max_length": MAX_LENGTH, "bf16": False,
                        **fields})


@pytest.fixture(scope="module")
def model(tiny_model):
    return AutoModelForCausalLM.from_pretrained(tiny_model)


@pytest.mark.parametrize("mode", ["keep_start", "keep_end"])
def test_rows_and_tokens_equal_what_sfttrainers_own_preparation_gives(tmp_path, tiny_tokenizer, model, mode):
    # Sample dialogues, and ones whose doctor reply starts past MAX_LENGTH: keep_start leaves them nothing to train.
    long_first = [{"messages": [{"role": "user", "content": "孩子咳嗽发烧，" * 30},
                                {"role": "assistant", "content": f"建议{k}"}]} for k in range(3)]
    sources = [DataSource(path=str(SAMPLE / "dialogues.jsonl")),
               DataSource(path=str(write_jsonl(tmp_path / "long.jsonl", long_first)))]
    cache = DataCache(tmp_path / "cache")
    items = load_sources(sources, dialogue, seed=3, cache=cache).items
    train_rows, eval_rows = items[20:], items[:20]

    theirs = SFTTrainer(model=model, args=config(tmp_path, truncation_mode=mode),
                        train_dataset=tokenize_all(tiny_tokenizer, train_rows, "train", cache),
                        eval_dataset=tokenize_all(tiny_tokenizer, eval_rows, "validation", cache),
                        processing_class=tiny_tokenizer)

    ours_config = config(tmp_path, truncation_mode=mode)
    train_set, eval_set, dropped = ready_sets(tiny_tokenizer, train_rows, eval_rows, cache, ours_config)
    assert ours_config.dataset_kwargs == {"skip_prepare_dataset": True}
    ours = SFTTrainer(model=model, args=ours_config, train_dataset=train_set, eval_dataset=eval_set,
                      processing_class=tiny_tokenizer)
    assert ours.train_dataset is train_set and ours.eval_dataset is eval_set  # the trainer took them as they are

    assert rows_of(ours.train_dataset) == rows_of(theirs.train_dataset)
    assert rows_of(ours.eval_dataset) == rows_of(theirs.eval_dataset)
    assert max(len(ids) for ids, _ in rows_of(train_set)) == MAX_LENGTH
    lost = dropped["train_rows_truncated_away"] + dropped["validation_rows_truncated_away"]
    assert lost == (len(long_first) if mode == "keep_start" else 0)
    assert len(train_set) + len(eval_set) == len(items) - lost


def test_the_trainer_keeps_its_own_preparation_where_it_does_more_than_truncate(tmp_path):
    assert sft_truncation(config(tmp_path)) == (MAX_LENGTH, "keep_start")
    assert sft_truncation(config(tmp_path, truncation_mode="keep_end")) == (MAX_LENGTH, "keep_end")
    assert sft_truncation(config(tmp_path, packing=True)) is None
    assert sft_truncation(config(tmp_path, eval_packing=True)) is None
    assert sft_truncation(SFTConfig(output_dir=str(tmp_path), report_to=[], max_length=None, bf16=False)) is None
    assert sft_truncation(config(tmp_path, dataset_kwargs={"skip_prepare_dataset": True})) is None


def test_a_changed_max_length_is_a_new_cache_entry_and_the_untruncated_one_is_kept_apart(tmp_path, tiny_tokenizer):
    cache = DataCache(tmp_path / "cache")
    items = load_sources([DataSource(path=str(SAMPLE / "dialogues.jsonl"))], dialogue, seed=3, cache=cache).items
    whole = tokenize_all(tiny_tokenizer, items, "train", cache)
    cut_128 = tokenize_all(tiny_tokenizer, items, "train", cache, truncate=(128, "keep_start"))
    cut_96 = tokenize_all(tiny_tokenizer, items, "train", cache, truncate=(96, "keep_start"))
    assert "trainable_tokens" not in whole.column_names
    assert [r[:96] for r in cut_128["input_ids"]] == cut_96["input_ids"]
    assert [r[:128] for r in whole["input_ids"]] == cut_128["input_ids"]
    built = [e for e in cache.events() if e["action"] == "prepared" and e["entry"].startswith("tokens")]
    assert len(built) == 3


def test_a_cut_that_leaves_nothing_to_train_says_which_setting_to_change(tmp_path, tiny_tokenizer):
    cache = DataCache(tmp_path / "cache")
    items = load_sources([DataSource(path=str(SAMPLE / "dialogues.jsonl"))], dialogue, seed=3, cache=cache).items
    with pytest.raises(ValueError, match="every train dialogue lost all its assistant tokens to trainer.max_length=16"):
        ready_sets(tiny_tokenizer, items, [], cache, config(tmp_path, max_length=16))
