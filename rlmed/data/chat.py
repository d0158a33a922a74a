"""Tokenising dialogues with a mask of the assistant's tokens, for any chat template.

Real templates (Qwen2.5's among them) have no `{% generation %}` markers, so transformers cannot return an
assistant mask for them, and trl's fallback only knows a few model families. rlmed finds each assistant turn by
rendering the dialogue's prefixes: the turn's text starts where `messages[:i]` rendered with the generation
prompt ends, and stops where `messages[:i+1]` rendered ends. Both must be prefixes of the full rendering; every
common template satisfies this, and one that does not is reported instead of guessed at.

`tokenize_dialogues` does the same for many dialogues at once, with identical results: every rendering in a few
batched `apply_chat_template` calls (the last assistant turn's rendering through the end is the whole dialogue's,
so it is not rendered twice), one batched call of the fast tokenizer (whose Rust side may use several threads),
and the mask read off a per-character map of the spans. `tokenize_dialogue` is the one-dialogue reference it is
tested against.

Trailing whitespace after the end-of-turn token (ChatML's "\n") is left out of the mask: a model stops
generating at the end-of-turn token, so it never produces that newline. The end-of-turn token itself is in
the mask, so the model learns to stop.
"""

from __future__ import annotations

from typing import Any


class ChatTemplateError(ValueError):
    pass


def _render(tokenizer: Any, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def assistant_spans(tokenizer: Any, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered dialogue and the character spans [start, end) of each assistant turn in it."""
    full = _render(tokenizer, messages, False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], True)
        through = _render(tokenizer, messages[: i + 1], False)
        if not full.startswith(before) or not full.startswith(through) or len(through) <= len(before):
            raise _prefix_error(i)
        turn = full[len(before):len(through)]
        spans.append((len(before), len(before) + len(turn.rstrip())))
    return full, spans


def tokenize_dialogue(tokenizer: Any, messages: list[dict]) -> dict[str, list[int]]:
    """`input_ids` of the rendered dialogue and `assistant_masks` (1 on assistant tokens, end-of-turn included).

    A token counts as the assistant's when it starts inside an assistant span.
    """
    text, spans = assistant_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = []
    span_index = 0
    for start, _end in encoded["offset_mapping"]:
        while span_index < len(spans) and start >= spans[span_index][1]:
            span_index += 1
        inside = span_index < len(spans) and spans[span_index][0] <= start < spans[span_index][1]
        mask.append(1 if inside else 0)
    return {"input_ids": list(encoded["input_ids"]), "assistant_masks": mask}


def _render_many(tokenizer: Any, conversations: list[list[dict]], generation_prompt: bool) -> list[str]:
    """`_render` of each conversation, in one batched call."""
    if not conversations:
        return []
    if any(not c for c in conversations):
        _render(tokenizer, [], generation_prompt)  # raises as the one-dialogue path does
    return tokenizer.apply_chat_template(conversations, tokenize=False, add_generation_prompt=generation_prompt)


def _prefix_error(i: int) -> ChatTemplateError:
    return ChatTemplateError(
        "the chat template does not render dialogues prefix by prefix (turn "
        f"{i} changes earlier text), so assistant tokens cannot be located; give a template with "
        "{% generation %} markers or a prefix-stable one in args.chat_template"
    )


def assistant_spans_many(tokenizer: Any, dialogues: list[list[dict]]) -> list[tuple[str, list[tuple[int, int]]]]:
    """`assistant_spans` of each dialogue, rendered in batched calls."""
    fulls = _render_many(tokenizer, dialogues, False)
    turns, befores, throughs = [], [], []  # (dialogue, message index, index into throughs or -1 for the full text)
    for d, messages in enumerate(dialogues):
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            befores.append(messages[:i])
            if i == len(messages) - 1:  # messages[: i + 1] is the whole dialogue
                turns.append((d, i, -1))
            else:
                turns.append((d, i, len(throughs)))
                throughs.append(messages[: i + 1])
    before_texts = _render_many(tokenizer, befores, True)
    through_texts = _render_many(tokenizer, throughs, False)
    out: list[tuple[str, list[tuple[int, int]]]] = [(full, []) for full in fulls]
    for (d, i, t), before in zip(turns, before_texts):
        full = fulls[d]
        through = full if t < 0 else through_texts[t]
        if not full.startswith(before) or not full.startswith(through) or len(through) <= len(before):
            raise _prefix_error(i)
        turn = full[len(before):len(through)]
        out[d][1].append((len(before), len(before) + len(turn.rstrip())))
    return out


def _mask_from_spans(offsets: list[tuple[int, int]], spans: list[tuple[int, int]], length: int) -> list[int]:
    """1 for each token whose first character lies in a span (the spans are disjoint)."""
    if not spans:
        return [0] * len(offsets)
    inside = bytearray(length + 1)
    for start, end in spans:
        inside[start:end] = b"\x01" * (end - start)
    return [inside[start] if start <= length else 0 for start, _end in offsets]


def tokenize_dialogues(tokenizer: Any, dialogues: list[list[dict]]) -> dict[str, list[list[int]]]:
    """`tokenize_dialogue` of every dialogue (the same ids and masks), as columns `input_ids`, `assistant_masks`;
    batched: the renderings in a few calls, the texts in one call of the (fast) tokenizer."""
    if not dialogues:
        return {"input_ids": [], "assistant_masks": []}
    rendered = assistant_spans_many(tokenizer, dialogues)
    encoded = tokenizer([text for text, _ in rendered], add_special_tokens=False, return_offsets_mapping=True)
    masks = [_mask_from_spans(offsets, spans, len(text))
             for (text, spans), offsets in zip(rendered, encoded["offset_mapping"])]
    return {"input_ids": encoded["input_ids"], "assistant_masks": masks}


def render_prompt(tokenizer: Any, messages: list[dict]) -> str:
    """The prompt text a model continues to write the next assistant turn."""
    return _render(tokenizer, messages, True)
