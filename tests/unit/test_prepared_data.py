"""The Arrow data path (rlmed.data.prepared) gives what the in-memory path gives — the same items in the same
order, the same token ids, masks and labels, the same bad-row handling — and its cache is reused only for the
same inputs and settings."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from rlmed.data.prepared import ArrowItems, DataCache
from rlmed.data.records import DataError
from rlmed.data.sources import DataSource, dialogue, doctor_prompts, load_sources, pair, text
from tests.conftest import SAMPLE, write_jsonl


def source(name: str, **fields) -> DataSource:
    return DataSource(path=str(SAMPLE / name), **fields)


def actions(cache: DataCache) -> list[tuple[str, str]]:
    return [(e["entry"].split("-")[0], e["action"]) for e in cache.events()]


@pytest.mark.parametrize("codec, sources, options", [
    (dialogue, [source("dialogues.jsonl"), source("sharegpt.jsonl"), source("instructions.jsonl")], {}),
    (dialogue, [source("dialogues.jsonl", weight=3.0), source("sharegpt.jsonl", weight=1.0)], {"total": 700}),
    (text, [source("corpus.jsonl"), source("instructions.jsonl")], {"total": 250}),
    (text, [source("corpus.jsonl"), source("exam_train.jsonl")], {"weights": [1.0, 0.5]}),
    (doctor_prompts, [source("doctor_dialogues.jsonl")], {"keep_order": True}),
], ids=["natural", "weighted", "text-total", "explicit-weights", "doctor-prompts-in-order"])
def test_arrow_path_gives_the_in_memory_items_in_the_same_order(tmp_path, codec, sources, options):
    in_memory = load_sources(sources, codec, seed=7, **options)
    arrow = load_sources(sources, codec, seed=7, cache=DataCache(tmp_path / "cache"), **options)
    assert isinstance(arrow.items, ArrowItems)
    assert len(arrow.items) == len(in_memory.items) > 0
    assert list(arrow.items) == in_memory.items
    assert arrow.items[3] == in_memory.items[3] and arrow.items[-1] == in_memory.items[-1]
    assert list(arrow.items[5:40]) == in_memory.items[5:40]
    assert arrow.source_ids == in_memory.source_ids and arrow.counts == in_memory.counts


def test_doctor_prompts_through_the_cache_equal_the_list_path_and_only_the_cap_is_decoded(tmp_path, monkeypatch):
    """ai_feedback, grpo/rloo/ppo and rubrics read their prompts this way: a rubric row's metadata survives the
    Arrow round trip, a second stage reuses the entry, and a bad row past the cap still stops the stage."""
    from rlmed.data import sources as sources_module
    from rlmed.data.sources import flat_doctor_prompts

    rubric = {"prompt_id": "hb-1", "prompt": [{"role": "user", "content": "孩子高烧不退"}],
              "rubrics": [{"criterion": "说明何时就医", "points": 5, "tags": ["axis:completeness"]}]}
    sources = [source("doctor_dialogues.jsonl"), DataSource(path=str(write_jsonl(tmp_path / "hb.jsonl", [rubric])))]
    cache = DataCache(tmp_path / "cache")
    listed = flat_doctor_prompts(sources, seed=1)
    assert flat_doctor_prompts(sources, seed=1, cache=cache) == listed and listed[-1].metadata["prompt_id"] == "hb-1"

    decoded = []
    codec = sources_module.doctor_prompts
    counting = sources_module.Codec(codec.name, codec.convert, codec.encode,
                                    lambda items: decoded.append(1) or codec.decode(items))
    monkeypatch.setattr(sources_module, "doctor_prompts", counting)
    assert flat_doctor_prompts(sources, seed=1, max_prompts=7, cache=cache) == listed[:7]
    assert len(decoded) <= 7 + 1  # rows decoded: up to the cap (one row may give several prompts), not all 401
    assert actions(cache)[-2:] == [("rows", "reused"), ("rows", "reused")]

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "咳嗽", "answer": "多喝水"}, {"question": "发烧"}])
    with pytest.raises(DataError, match="bad.jsonl:2: missing field 'reference'"):
        flat_doctor_prompts([DataSource(path=str(bad))], seed=1, max_prompts=1, cache=cache)


def test_preference_pairs_come_back_as_pairs(tmp_path):
    rows = [{"prompt": f"孩子发烧{i}天怎么办", "chosen": f"先测体温{i}", "rejected": f"用酒精擦{i}"} for i in range(30)]
    sources = [DataSource(path=str(write_jsonl(tmp_path / "pairs.jsonl", rows)))]
    listed = load_sources(sources, pair, seed=2, total=45)
    arrow = load_sources(sources, pair, seed=2, total=45, cache=DataCache(tmp_path / "cache"))
    assert list(arrow.items) == listed.items and type(arrow.items[0]) is type(listed.items[0])


def test_tokenised_through_the_cache_equals_the_list_path(tmp_path, tiny_tokenizer, monkeypatch):
    """On the sample dialogues and 3000 generated ones, with two worker processes: identical ids, masks, labels."""
    from bench.data import make_dialogues
    from rlmed.data.tokenized import tokenize_all

    generated = write_jsonl(tmp_path / "generated.jsonl", [{"messages": d} for d in make_dialogues(3000, seed=1)])
    sources = [source("dialogues.jsonl"), source("sharegpt.jsonl"), DataSource(path=str(generated))]
    monkeypatch.setenv("RLMED_DATA_NUM_PROC", "2")
    cache = DataCache(tmp_path / "cache")
    arrow = load_sources(sources, dialogue, seed=3, cache=cache).items
    listed = load_sources(sources, dialogue, seed=3).items
    n_eval = 100
    for part in (slice(n_eval, None), slice(None, n_eval)):
        expected = tokenize_all(tiny_tokenizer, listed[part], "list")
        got = tokenize_all(tiny_tokenizer, arrow[part], "arrow", cache)
        assert len(got) == len(expected)
        for column in ("input_ids", "assistant_masks", "labels"):
            assert got[column] == expected[column], column
    # Each source is tokenised once, in file order, for both splits; the validation split reuses it.
    tokens = [e for e in cache.events() if e["entry"].startswith("tokens-")]
    assert [e["action"] for e in tokens] == ["prepared"] * 3 + ["reused"] * 3
    assert len({e["entry"] for e in tokens}) == 3
    biggest = max((json.loads((cache.root / e["entry"] / "record.json").read_text()) for e in tokens),
                  key=lambda record: record["rows"])
    assert biggest["num_proc"] == 2 and len(biggest["files"]) == 2  # really split over two workers
    # Another seed mixes the same sources differently: nothing is tokenised again, and the ids still match.
    reseeded = load_sources(sources, dialogue, seed=4, cache=cache).items
    again = tokenize_all(tiny_tokenizer, reseeded[n_eval:], "arrow", cache)
    assert again["input_ids"] == tokenize_all(tiny_tokenizer, load_sources(sources, dialogue, seed=4).items[n_eval:],
                                              "list")["input_ids"]
    assert all(e["action"] == "reused" for e in cache.events()[len(tokens) + 3:])


def test_a_second_load_reuses_and_a_changed_file_or_setting_prepares_anew(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"instruction": f"问题{i}", "output": f"回答{i}"} for i in range(50)])
    cache = DataCache(tmp_path / "cache")
    first = load_sources([DataSource(path=str(data))], dialogue, seed=1, cache=cache).items
    again = load_sources([DataSource(path=str(data))], dialogue, seed=1, cache=cache).items
    assert list(first) == list(again)
    assert actions(cache) == [("rows", "prepared"), ("rows", "reused")]

    write_jsonl(data, [{"instruction": f"问题{i}", "output": f"新回答{i}"} for i in range(50)])
    changed = load_sources([DataSource(path=str(data))], dialogue, seed=1, cache=cache).items
    assert actions(cache)[-1] == ("rows", "prepared")
    assert changed[0][-1]["content"].startswith("新回答")  # never the stale rows

    renamed = write_jsonl(tmp_path / "r.jsonl", [{"q": f"问题{i}", "a": f"回答{i}"} for i in range(50)])
    mapped = DataSource(path=str(renamed), columns={"instruction": "q", "output": "a"})
    load_sources([mapped], dialogue, seed=1, cache=cache)
    other = DataSource(path=str(renamed), columns={"instruction": "a", "output": "q"})
    swapped = load_sources([other], dialogue, seed=1, cache=cache).items
    assert actions(cache)[-2:] == [("rows", "prepared"), ("rows", "prepared")]
    assert swapped[0][0]["content"].startswith("回答")
    assert len({e["entry"] for e in cache.events()}) == 4


def test_bad_rows_fail_with_their_line_or_are_skipped_and_counted_as_before(tmp_path):
    path = tmp_path / "bad.jsonl"
    rows = [json.dumps({"instruction": f"问{i}", "output": f"答{i}"}, ensure_ascii=False) for i in range(6)]
    rows[2] = "{not json"
    rows[4] = json.dumps({"unknown": 1})
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    cache = DataCache(tmp_path / "cache")
    with pytest.raises(DataError) as failed:
        load_sources([DataSource(path=str(path))], dialogue, seed=1, cache=cache)
    assert f"{path}:3: invalid JSON" in str(failed.value)
    assert not [p for p in cache.root.iterdir() if p.name.startswith(("rows-", ".rows-"))]  # nothing half-made

    skip = DataSource(path=str(path), on_bad_rows="skip")
    arrow = load_sources([skip], dialogue, seed=1, cache=cache)
    listed = load_sources([skip], dialogue, seed=1)
    assert len(arrow.items) == 4 and list(arrow.items) == listed.items
    assert arrow.bad_rows == listed.bad_rows == {str(path): 2}
    assert arrow.bad_row_reasons == listed.bad_row_reasons and f"{path}:5:" in arrow.bad_row_reasons[1]
    again = load_sources([skip], dialogue, seed=1, cache=cache)  # from the cache: the counts come with it
    assert again.bad_rows == {str(path): 2} and again.bad_row_reasons == listed.bad_row_reasons


def test_a_build_that_crashes_leaves_nothing_and_the_next_one_builds(tmp_path):
    cache = DataCache(tmp_path / "cache")

    def broken(folder: Path) -> dict:
        (folder / "half.arrow").write_text("x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        cache.entry("rows", {"a": 1}, broken)
    assert sorted(p.name for p in cache.root.iterdir() if p.name != "locks") == []
    folder, record = cache.entry("rows", {"a": 1}, lambda f: {"ok": True})
    assert record["ok"] and (folder / "record.json").exists()


def _load_in_process(cache_root: str, data: str, out: str) -> None:
    from rlmed.data.prepared import DataCache
    from rlmed.data.sources import DataSource, dialogue, load_sources

    items = load_sources([DataSource(path=data)], dialogue, seed=1, cache=DataCache(Path(cache_root))).items
    Path(out).write_text(json.dumps(list(items), ensure_ascii=False), encoding="utf-8")


def test_processes_loading_at_once_prepare_once_and_read_the_same_rows(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"instruction": f"问题{i}", "output": "回" * 500} for i in range(4000)])
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_load_in_process, args=(str(tmp_path / "cache"), str(data),
                                                                 str(tmp_path / f"out{i}.json")))
               for i in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    events = DataCache(tmp_path / "cache").events()
    assert sorted(e["action"] for e in events) == ["prepared", "reused", "reused"]
    assert len({e["pid"] for e in events}) == 3
    outputs = [(tmp_path / f"out{i}.json").read_text() for i in range(3)]
    assert outputs[0] == outputs[1] == outputs[2] and len(json.loads(outputs[0])) == 4000


def test_pretraining_blocks_through_the_cache_equal_the_list_path(tmp_path, tiny_tokenizer, monkeypatch):
    """Documents tokenised by two workers and packed into a cached Arrow file a batch at a time: the same blocks
    (EOS between documents, the tail dropped) and counts as packing the list in memory."""
    from rlmed.artifacts import stable_hash
    from rlmed.data.tokenized import packed_blocks, tokenize_texts, tokenizer_hash

    monkeypatch.setenv("RLMED_DATA_NUM_PROC", "2")
    monkeypatch.setattr("rlmed.data.tokenized.TOKENIZE_CHUNK", 7)  # many record batches, the last one short
    sources = [source("corpus.jsonl"), source("instructions.jsonl")]
    cache = DataCache(tmp_path / "cache")
    arrow = load_sources(sources, text, seed=5, total=300, cache=cache).items
    listed = load_sources(sources, text, seed=5, total=300).items
    eos = tiny_tokenizer.eos_token_id
    expected, expected_counts = packed_blocks(tokenize_texts(tiny_tokenizer, listed, "list"), 48, eos)
    key = stable_hash([arrow.key, tokenizer_hash(tiny_tokenizer)])
    got, counts = packed_blocks(tokenize_texts(tiny_tokenizer, arrow, "arrow", cache), 48, eos, cache, key)
    assert len(got) == len(expected) > 10
    assert got["input_ids"] == expected["input_ids"]
    assert all(len(block) == 48 for block in got["input_ids"])
    assert (counts.num_docs, counts.num_tokens, counts.dropped_tokens) == \
        (expected_counts.num_docs, expected_counts.num_tokens, expected_counts.dropped_tokens)
    assert counts.num_docs == 300
    # The blocks hold every document's tokens in order with EOS after each (nothing but the tail dropped).
    docs = [ids + [eos] for ids in tiny_tokenizer(list(listed), add_special_tokens=False)["input_ids"]]
    stream = [t for doc in docs for t in doc]
    assert [t for block in got["input_ids"] for t in block] == stream[:len(got) * 48]


def test_text_unit_splits_a_txt_corpus_and_keys_the_cache(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("第一段第一行\n第一段第二行\n\n第二段\n", encoding="utf-8")
    cache = DataCache(tmp_path / "cache")
    lines = load_sources([DataSource(path=str(corpus))], text, seed=1, keep_order=True, cache=cache).items
    paragraphs = load_sources([DataSource(path=str(corpus), text_unit="paragraph")], text, seed=1,
                              keep_order=True, cache=cache).items
    assert list(lines) == ["第一段第一行", "第一段第二行", "第二段"]
    assert list(paragraphs) == ["第一段第一行\n第一段第二行", "第二段"]
    assert actions(cache) == [("rows", "prepared"), ("rows", "prepared")]


def test_a_small_sample_of_large_sources_tokenises_only_its_rows_and_equals_the_list_path(tmp_path, tiny_tokenizer):
    """Weights that take a few rows of big sources map only those rows (one entry per source and sample), alone
    or beside another source, and give the list path's ids; a new sample is a new entry."""
    from bench.data import make_dialogues
    from rlmed.data.tokenized import tokenize_all

    big = write_jsonl(tmp_path / "big.jsonl", [{"messages": d} for d in make_dialogues(400, seed=5)])
    cache = DataCache(tmp_path / "cache")
    for seed, sources, options in (
            (9, [DataSource(path=str(big))], {"total": 60}),
            (10, [DataSource(path=str(big), weight=1.0), source("dialogues.jsonl", weight=1.0)], {"total": 120})):
        arrow = load_sources(sources, dialogue, seed=seed, cache=cache, **options).items
        listed = load_sources(sources, dialogue, seed=seed, **options).items
        got = tokenize_all(tiny_tokenizer, arrow, "arrow", cache)
        expected = tokenize_all(tiny_tokenizer, listed, "list")
        for column in ("input_ids", "assistant_masks", "labels"):
            assert got[column] == expected[column], column
    records = [json.loads((cache.root / e["entry"] / "record.json").read_text())
               for e in cache.events() if e["entry"].startswith("tokens-") and e["action"] == "prepared"]
    big_samples = [r for r in records if r["parts"]["rows"] == records[0]["parts"]["rows"]]
    assert len(big_samples) == 2 and all(r["parts"]["subset"] != "all" for r in big_samples)
    assert sorted(r["rows"] for r in big_samples) == [60, 60]


def test_a_prepared_source_is_written_in_record_batches_bounded_by_characters(tmp_path, monkeypatch):
    """Every process that opens a prepared source reads each batch's header (rlmed.data.mapped_pages): rows go
    into batches of about ITEM_BATCH_CHARS characters, not of a fixed 1000 rows, and read back the same."""
    import pyarrow as pa

    from rlmed.data import prepared

    items = [{"messages": [{"role": "user", "content": f"第{i}个问题" + "咳" * (i % 900)}]} for i in range(3000)]

    def batches(path: Path) -> list[list[str]]:
        with pa.memory_map(str(path)) as mapped:
            return [b.column(0).to_pylist() for b in pa.ipc.open_stream(mapped).read_all().to_batches()]

    assert prepared.write_items(tmp_path / "default.arrow", iter(items), lambda x: x) == 3000
    assert len(batches(tmp_path / "default.arrow")) == 1  # 1.4M characters: one batch, where 1000 rows gave 3

    monkeypatch.setattr(prepared, "ITEM_BATCH_CHARS", 100_000)
    prepared.write_items(tmp_path / "small.arrow", iter(items), lambda x: x)
    written = batches(tmp_path / "small.arrow")
    assert [json.loads(text) for batch in written for text in batch] == items
    sizes = [sum(len(text) for text in batch) for batch in written]
    assert len(written) > 10 and all(100_000 <= size < 100_000 + 1000 for size in sizes[:-1]), sizes
