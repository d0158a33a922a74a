"""Assistant-only label masks, checked against the rendered text of multi-turn dialogues."""

from __future__ import annotations

import pytest

from rlmed.data.chat import ChatTemplateError, tokenize_dialogue

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


def sft_trainer(tiny_model, tiny_tokenizer, tmp_path, dataset, **config):
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=str(tmp_path), report_to="none", bf16=False, use_cpu=True, **config)
    return SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model), args=args,
                      train_dataset=dataset, processing_class=tiny_tokenizer)


def test_sft_trainer_builds_labels_from_rlmed_masks(tiny_model, tiny_tokenizer, tmp_path):
    """trl turns our masks into labels: -100 everywhere except assistant tokens (guards against trl changes)."""
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
