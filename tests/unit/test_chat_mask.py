"""Assistant-only label masks, checked against the rendered text of multi-turn dialogues."""

from __future__ import annotations

import pytest

from rlmed.data.chat import ChatTemplateError, tokenize_dialogue, tokenize_dialogues

DIALOGUE = [
    {"role": "user", "content": "医生，孩子发烧38.5度两天了，精神还可以。"},
    {"role": "assistant", "content": "精神好的话可以先在家观察，多喝水，体温超过38.5度可用退烧药。"},
    {"role": "user", "content": "需要去医院吗？"},
    {"role": "assistant", "content": "如果持续高热超过三天，或出现抽搐、精神差，请尽快就医。"},
]


def runs(ids: list[int], mask: list[int]) -> list[list[int]]:
    """Contiguous stretches of masked-in token ids."""
    out, current = [], []
    for token, bit in zip(ids, mask):
        if bit:
            current.append(token)
        elif current:
            out.append(current)
            current = []
    if current:
        out.append(current)
    return out


def test_tiny_template_has_no_generation_markers(tiny_tokenizer):
    import re

    assert not re.search(r"{%-?\s*generation", tiny_tokenizer.chat_template)
    assert "add_generation_prompt" in tiny_tokenizer.chat_template


@pytest.mark.parametrize("with_system", [False, True])
def test_mask_covers_exactly_each_assistant_turn_with_its_eos(tiny_tokenizer, with_system):
    messages = ([{"role": "system", "content": "你是儿科医生。"}] if with_system else []) + DIALOGUE
    out = tokenize_dialogue(tiny_tokenizer, messages)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask)
    rendered = tiny_tokenizer.apply_chat_template(messages, tokenize=False)
    assert tiny_tokenizer.decode(ids) == rendered  # the ids are the rendered text, nothing lost

    turns = runs(ids, mask)
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    assert len(turns) == len(answers)
    for turn, answer in zip(turns, answers):
        assert turn[-1] == tiny_tokenizer.eos_token_id  # the model learns to stop
        assert tiny_tokenizer.decode(turn) == answer + tiny_tokenizer.eos_token
    # Nothing of the system prompt, the user turns or the role headers is in the loss.
    masked_out = tiny_tokenizer.decode([t for t, m in zip(ids, mask) if not m])
    for m in messages:
        if m["role"] != "assistant":
            assert m["content"] in masked_out
    assert "<|im_start|>assistant\n" in masked_out


def test_template_that_rewrites_earlier_turns_is_refused(tiny_tokenizer):
    # This template renders the last message differently, so prefixes are not stable.
    tiny_tokenizer = tiny_tokenizer.__class__.from_pretrained(tiny_tokenizer.name_or_path)
    tiny_tokenizer.chat_template = (
        "{% for m in messages %}{% if loop.last %}[LAST]{% endif %}{{ m['role'] }}: {{ m['content'] }}\n"
        "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
    )
    with pytest.raises(ChatTemplateError, match="prefix"):
        tokenize_dialogue(tiny_tokenizer, DIALOGUE)
    with pytest.raises(ChatTemplateError, match="prefix"):
        tokenize_dialogues(tiny_tokenizer, [DIALOGUE[:2], DIALOGUE])


def varied_dialogues() -> list[list[dict]]:
    """1-3 turns, with and without a system prompt, answers with trailing whitespace or a literal end-of-turn."""
    answers = ["多喝水。", "可以先观察。\n\n", "  体温超过38.5度可用退烧药，注意间隔4到6小时。  ", "好的<|im_end|>再见",
               "如果持续高热超过三天，或出现抽搐、精神差，请尽快就医。" * 3]
    questions = ["孩子咳嗽怎么办？", "需要去医院吗？\n", "宝宝两岁，发烧三天，体温最高39度。"]
    out = []
    for i in range(24):
        messages = [{"role": "system", "content": "你是儿科医生。"}] if i % 3 == 0 else []
        for t in range(i % 3 + 1):
            messages += [{"role": "user", "content": questions[(i + t) % len(questions)]},
                         {"role": "assistant", "content": answers[(i * 2 + t) % len(answers)]}]
        out.append(messages)
    return out


OTHER_TEMPLATE = (  # no default system turn, a blank line after each turn, a generation prompt with a space
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}<|im_end|>\n\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)


@pytest.mark.parametrize("template", ["own", "other"])
def test_batched_tokenisation_equals_the_per_dialogue_one(tiny_tokenizer, template, monkeypatch):
    """tokenize_dialogues / tokenize_all (batched renders, one tokenizer call per chunk) give exactly the ids and
    masks of tokenize_dialogue, one dialogue at a time; tokenize_all's labels are the ids under the mask."""
    from rlmed.data import tokenized as sft

    if template == "other":
        tiny_tokenizer = tiny_tokenizer.__class__.from_pretrained(tiny_tokenizer.name_or_path)
        tiny_tokenizer.chat_template = OTHER_TEMPLATE
    dialogues = varied_dialogues()
    expected = [tokenize_dialogue(tiny_tokenizer, d) for d in dialogues]
    batched = tokenize_dialogues(tiny_tokenizer, dialogues)
    assert batched["input_ids"] == [e["input_ids"] for e in expected]
    assert batched["assistant_masks"] == [e["assistant_masks"] for e in expected]
    assert all(any(m) for m in batched["assistant_masks"])

    monkeypatch.setattr(sft, "TOKENIZE_CHUNK", 5)  # several chunks, the last one short
    dataset = sft.tokenize_all(tiny_tokenizer, dialogues, "train")
    assert dataset["input_ids"] == batched["input_ids"]
    assert dataset["assistant_masks"] == batched["assistant_masks"]
    assert dataset["labels"] == [[t if m else -100 for t, m in zip(e["input_ids"], e["assistant_masks"])]
                                 for e in expected]
    assert tokenize_dialogues(tiny_tokenizer, []) == {"input_ids": [], "assistant_masks": []}


def sft_trainer(tiny_model, tiny_tokenizer, tmp_path, dataset, **config):
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=str(tmp_path), report_to="none", bf16=False, use_cpu=True, **config)
    return SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model), args=args,
                      train_dataset=dataset, processing_class=tiny_tokenizer)


def test_sft_trainer_builds_labels_from_rlmed_masks(tiny_model, tiny_tokenizer, tmp_path):
    """trl trains on rlmed's labels as given: -100 everywhere except assistant tokens (guards against trl changes)."""
    from rlmed.stages.sft import tokenize_all

    dataset = tokenize_all(tiny_tokenizer, [DIALOGUE, DIALOGUE[:2]], "train")
    trainer = sft_trainer(tiny_model, tiny_tokenizer, tmp_path, dataset, max_length=512)
    for row, prepared in zip(dataset, trainer.train_dataset, strict=True):
        expected = [t if m else -100 for t, m in zip(row["input_ids"], row["assistant_masks"])]
        assert prepared["labels"] == expected


def test_packed_sft_keeps_exactly_the_assistant_labels(tiny_model, tiny_tokenizer, tmp_path):
    """With trl's packing the rows are merged, but the trained tokens are the same assistant tokens."""
    from collections import Counter

    from rlmed.stages.sft import tokenize_all

    dialogues = [DIALOGUE, DIALOGUE[:2], DIALOGUE[2:], DIALOGUE] * 3
    dataset = tokenize_all(tiny_tokenizer, dialogues, "train")
    trainer = sft_trainer(tiny_model, tiny_tokenizer, tmp_path, dataset, max_length=256, packing=True)
    packed = trainer.train_dataset
    assert len(packed) < len(dataset)  # rows really were packed together
    expected = Counter(t for row in dataset for t, m in zip(row["input_ids"], row["assistant_masks"]) if m)
    trained = Counter(t for row in packed for t in row["labels"] if t != -100)
    assert trained == expected


def test_packed_padding_free_rows_keep_documents_apart_with_sdpa(tiny_model, tiny_tokenizer, tmp_path):
    """trl's bfd packing with padding-free batches is correct on CPU with sdpa attention: transformers isolates the
    packed documents by their position_ids, so a document's logits in a packed row equal its logits alone, and
    the labels are the assistant tokens only (each document's first token, which follows the previous document,
    is never a target)."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlmed.stages.sft import tokenize_all

    dialogues = [DIALOGUE, DIALOGUE[:2], DIALOGUE[2:], [{"role": "system", "content": "你是儿科医生。"}, *DIALOGUE]]
    dataset = tokenize_all(tiny_tokenizer, dialogues, "train")
    trainer = sft_trainer(tiny_model, tiny_tokenizer, tmp_path, dataset, max_length=512, packing=True,
                          per_device_train_batch_size=2)
    assert trainer.padding_free  # trl turns it on for bfd packing
    rows = trainer.train_dataset.to_list()
    batch = trainer.data_collator(rows[:2])  # two packed rows, flattened into one
    assert set(batch) >= {"input_ids", "position_ids", "labels"} and "attention_mask" not in batch
    lengths = [n for row in rows[:2] for n in row["seq_lengths"]]
    assert len(lengths) >= 3 and sum(lengths) == batch["input_ids"].shape[1]

    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa").eval()
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        # use_cache=False as trl's compute_loss passes it: with a cache, transformers does not look for packing.
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        unaware = model(input_ids=batch["input_ids"], use_cache=False).logits[0]
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    start = 0
    for n in lengths:
        with torch.no_grad():
            alone = model(input_ids=ids[start:start + n][None], use_cache=False).logits[0]
        assert torch.allclose(packed[start:start + n], alone, atol=1e-5)
        if start:  # without position_ids, later documents would attend to earlier ones
            assert not torch.allclose(unaware[start:start + n], alone, atol=1e-3)
        expected = dataset["labels"][dataset["input_ids"].index(ids[start:start + n].tolist())]  # whole dialogues
        assert labels[start:start + n].tolist() == [-100] + expected[1:]
        assert expected[0] == -100  # the first token is the template's, never the assistant's
        start += n
