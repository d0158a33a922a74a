"""Multiple choice by log-likelihood: which option's answer the model finds most probable (lm-eval-harness style).

Generation-based scoring (rlmed.eval.choice.extract_choice on a greedy answer) asks a model to pick an option and
write it down; a small model that knows the answer may still write a symptom it remembers rather than the one
listed, and a base model has no answer format at all. Log-likelihood scoring asks instead how probable the model
finds each option's answer, written as the model was taught to write it (`continuation`: a format string over
the row's fields, `{option}` and `{letter}`), after the question rendered as a chat prompt, and takes the most
probable. The answer text is tokenised together with the prompt, as SFT renders a dialogue, so the token
boundary between them is the one the model trained on.
"""

from __future__ import annotations

import string
from typing import Any, Sequence


class ContinuationError(ValueError):
    """The continuation template names a field the row does not have, or is malformed."""


def continuations(template: str, row: dict[str, Any], options: Sequence[str]) -> list[str]:
    """The answer text for every option of `row`: `template` filled with the row's fields, `option`, `letter`."""
    letters = string.ascii_uppercase[:len(options)]
    try:
        return [template.format(**{**row, "option": option, "letter": letter})
                for letter, option in zip(letters, options)]
    except KeyError as exc:
        raise ContinuationError(f"choice_continuation '{template}' names the field {exc}, which the row does not "
                                f"have (fields: {', '.join(sorted(row))}, plus option and letter)") from None
    except (IndexError, ValueError) as exc:
        raise ContinuationError(f"choice_continuation '{template}' is not a valid format string: {exc}") from None


def _answer_ids(tokenizer: Any, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) with the answer tokenised as part of the whole text when the prompt's own tokens
    are a prefix of it (they are unless a merge crosses the boundary; then the answer is tokenised alone)."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    whole = tokenizer(prompt + answer, add_special_tokens=False)["input_ids"]
    if whole[:len(prompt_ids)] == prompt_ids and len(whole) > len(prompt_ids):
        return prompt_ids, whole[len(prompt_ids):]
    return prompt_ids, tokenizer(answer, add_special_tokens=False)["input_ids"]


def score_continuations(model_path: str, prompts: list[list[dict]], answers: list[list[str]], batch_size: int,
                        dtype: str = "auto") -> list[list[float]]:
    """For each prompt (chat messages ending with the user) the summed log-probability of each of its answers as
    the assistant's reply. Rows of one batch are right-padded; only answer tokens count."""
    import torch
    from tqdm import tqdm

    from rlmed import dist
    from rlmed.data.chat import render_prompt
    from rlmed.models.loading import load_causal_lm, load_tokenizer

    if not prompts:
        return []
    tokenizer = load_tokenizer(model_path)
    model = load_causal_lm(model_path, dtype=dtype).eval()
    device = torch.device(f"cuda:{dist.local_rank()}") if torch.cuda.is_available() else torch.device("cpu")
    model.to(device)
    pairs = [(p, a) for messages, options in zip(prompts, answers)
             for p in [render_prompt(tokenizer, messages)] for a in options]
    encoded = [_answer_ids(tokenizer, p, a) for p, a in pairs]
    scores: list[float] = []
    batches = range(0, len(encoded), batch_size)
    for start in tqdm(batches, desc="scoring options", unit="batch", disable=len(batches) < 2):
        chunk = encoded[start:start + batch_size]
        width = max(len(p) + len(a) for p, a in chunk)
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, (p, a) in enumerate(chunk):
            ids[i, :len(p) + len(a)] = torch.tensor(p + a)
            mask[i, :len(p) + len(a)] = 1
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float(), -1)
        for i, (p, a) in enumerate(chunk):
            # The token at position t is predicted by the logits at t - 1.
            positions = torch.arange(len(p) - 1, len(p) + len(a) - 1, device=logprobs.device)
            targets = torch.tensor(a, device=logprobs.device)
            scores.append(float(logprobs[i, positions, targets].sum()))
    out, k = [], 0
    for options in answers:
        out.append(scores[k:k + len(options)])
        k += len(options)
    return out
