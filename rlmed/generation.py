"""Sampling answers from a policy: batched HF generation here, or an OpenAI-compatible server.

Both return, for each prompt (chat messages ending with the user), `samples_per_prompt` answer texts. Shared
by the stages that sample (ai_feedback now; PPO/GRPO rollouts and evaluation later).
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


def generate_hf(model_path: str, prompts: list[list[dict]], args: Any, seed: int) -> list[list[str]]:
    """Sample with transformers' `generate`, batched (`args.batch_size` prompts at a time), left-padded."""
    import torch
    from tqdm import tqdm

    from rlmed import dist
    from rlmed.data.chat import render_prompt
    from rlmed.models.loading import load_causal_lm, load_tokenizer

    if not prompts:
        return []
    tokenizer = load_tokenizer(model_path)
    tokenizer.padding_side = "left"  # generation continues from the right end of every row
    model = load_causal_lm(model_path, dtype=args.dtype).eval()
    device = torch.device(f"cuda:{dist.local_rank()}") if torch.cuda.is_available() else torch.device("cpu")
    model.to(device)
    torch.manual_seed(seed)
    k = args.samples_per_prompt
    out: list[list[str]] = []
    batches = range(0, len(prompts), args.batch_size)
    for start in tqdm(batches, desc="generating", unit="batch", disable=len(batches) < 2):
        texts = [render_prompt(tokenizer, m) for m in prompts[start:start + args.batch_size]]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        # temperature 0 means greedy decoding (evaluation); sampling otherwise.
        sampling = ({"do_sample": True, "temperature": args.temperature, "top_p": args.top_p}
                    if args.temperature > 0 else {"do_sample": False})
        with torch.no_grad():
            generated = model.generate(
                **enc, **sampling, max_new_tokens=args.max_new_tokens, num_return_sequences=k,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )
        answers = tokenizer.batch_decode(generated[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        out += [[a.strip() for a in answers[i:i + k]] for i in range(0, len(answers), k)]
    return out


def generate_endpoint(endpoint: Any, prompts: list[list[dict]], args: Any) -> list[list[str]]:
    """Sample through an OpenAI-compatible server: one request per sample (servers differ on `n`), all in
    flight at once up to the endpoint's concurrency; never cached (samples must differ)."""
    import asyncio

    from reward.client import ChatClient, ChatRequest, JudgeError

    client = ChatClient(base_url=endpoint.base_url, model=endpoint.model, api_key_env=endpoint.api_key_env,
                        max_concurrency=endpoint.max_concurrency, parse_retries=0)
    sampling = {"temperature": args.temperature, "top_p": args.top_p, "max_tokens": args.max_new_tokens}
    requests = [ChatRequest(messages=m, sampling=sampling) for m in prompts for _ in range(args.samples_per_prompt)]
    results = asyncio.run(client.chat_many(requests))
    failed = [r for r in results if isinstance(r, JudgeError)]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(results)} generation requests to {endpoint.base_url} failed; "
                           f"the first: {failed[0]}")
    texts = [r.text.strip() for r in results]
    k = args.samples_per_prompt
    return [texts[i:i + k] for i in range(0, len(texts), k)]
