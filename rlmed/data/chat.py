"""Tokenising dialogues with a mask of the assistant's tokens, for any chat template.

Real templates (Qwen2.5's among them) have no `{% generation %}` markers, so transformers cannot return an
assistant mask for them, and trl's fallback only knows a few model families. rlmed finds each assistant turn by
rendering the dialogue's prefixes: the turn's text starts where `messages[:i]` rendered with the generation
prompt ends, and stops where `messages[:i+1]` rendered ends. Both must be prefixes of the full rendering; every
common template satisfies this, and one that does not is reported instead of guessed at.

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
            raise ChatTemplateError(
                "the chat template does not render dialogues prefix by prefix (turn "
                f"{i} changes earlier text), so assistant tokens cannot be located; give a template with "
                "{% generation %} markers or a prefix-stable one in args.chat_template"
            )
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


def render_prompt(tokenizer: Any, messages: list[dict]) -> str:
    """The prompt text a model continues to write the next assistant turn."""
    return _render(tokenizer, messages, True)
