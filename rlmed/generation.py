"""Sampling answers from a policy: batched HF generation here, or an OpenAI-compatible server.

Both return, for each prompt (chat messages ending with the user), `samples_per_prompt` answer texts. Shared
by the stages that sample: ai_feedback, the held-out answers of ppo/grpo/rloo, evaluate. HF generation samples
exactly what the arguments say (rlmed.sampling): a model's generation_config.json (repetition penalties,
n-gram bans, ...) applies only where the caller asks for it (`model_generation_config`).

Prompts are patient dialogues. Sent to a server on another host (`endpoint.base_url` not on this machine,
reward.urls.is_local), they are de-identified first with reward.deid, the masking the judges use: the policy
then answers a dialogue whose phone and ID numbers read [电话], [身份证号], which no good answer depends on.
A server on this machine gets them unchanged (nothing leaves the machine). `deidentify: false`,
`deid_patterns` and `allowed_hosts` on the endpoint, where the endpoint has them, work as on a judge.
"""

from __future__ import annotations

import logging
from typing import Any

from reward.deid import Deidentifier

logger = logging.getLogger(__name__)


def generate_hf(model_path: str, prompts: list[list[dict]], args: Any, seed: int,
                used: dict[str, Any] | None = None) -> list[list[str]]:
    """Sample with transformers' `generate`, batched (`args.batch_size` prompts at a time), left-padded.

    `args`: samples_per_prompt, temperature (0: greedy), top_p, max_new_tokens, batch_size, dtype; optionally
    top_k (default: off) and model_generation_config (default False: the model's generation_config.json is
    ignored; True: it fills every field not given, top_k included). `used`, when given, receives the
    generation settings applied."""
    import torch
    from tqdm import tqdm

    from rlmed import dist
    from rlmed.data.chat import render_prompt
    from rlmed.models.loading import load_causal_lm, load_tokenizer
    from rlmed.sampling import describe, generate_with, sampling_config

    if not prompts:
        return []
    tokenizer = load_tokenizer(model_path)
    tokenizer.padding_side = "left"  # generation continues from the right end of every row
    model = load_causal_lm(model_path, dtype=args.dtype).eval()
    device = torch.device(f"cuda:{dist.local_rank()}") if torch.cuda.is_available() else torch.device("cpu")
    model.to(device)
    torch.manual_seed(seed)
    k = args.samples_per_prompt
    own = bool(getattr(args, "model_generation_config", False))
    config = sampling_config(temperature=args.temperature, top_p=args.top_p, top_k=getattr(args, "top_k", None),
                             max_new_tokens=args.max_new_tokens, num_return_sequences=k,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                             model_defaults=model.generation_config if own else None)
    settings = {"model_generation_config": own, **describe(config)}
    logger.info("generating with %s", settings)
    if used is not None:
        used.update(settings)
    out: list[list[str]] = []
    batches = range(0, len(prompts), args.batch_size)
    for start in tqdm(batches, desc="generating", unit="batch", disable=len(batches) < 2):
        texts = [render_prompt(tokenizer, m) for m in prompts[start:start + args.batch_size]]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        with torch.no_grad():
            generated = generate_with(model, config, **enc)
        answers = tokenizer.batch_decode(generated[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        out += [[a.strip() for a in answers[i:i + k]] for i in range(0, len(answers), k)]
    return out


def _unmasked_because(endpoint: Any) -> str | None:
    """Why prompts to `endpoint` may go unmasked (a server on this machine, or `deidentify` false), else None:
    the one decision that both the masking and the manifest's record of it follow."""
    from reward.urls import is_local

    if is_local(endpoint.base_url):
        return "a server on this machine: nothing left it"
    if getattr(endpoint, "deidentify", True) is False:
        return "endpoint.deidentify is false"
    return None


def endpoint_deidentifier(endpoint: Any) -> Deidentifier | None:
    """The masking for prompts sent to `endpoint`: None when they may go as they are (a server on this machine,
    or `endpoint.deidentify` false), else a Deidentifier with the endpoint's `deid_patterns` if it has any."""
    from reward.urls import is_local, public_url

    if _unmasked_because(endpoint) is not None:
        if not is_local(endpoint.base_url):
            logger.warning("endpoint.deidentify is false: prompts go to %s unmasked", public_url(endpoint.base_url))
        return None
    return Deidentifier(getattr(endpoint, "deid_patterns", None))


def endpoint_record(endpoint: Any) -> dict[str, Any]:
    """Where the prompts went and how they were masked, for the manifest (a security review reads it there)."""
    from reward.urls import public_url

    why = _unmasked_because(endpoint)
    masking = ({"enabled": False, "why": why} if why is not None
               else Deidentifier(getattr(endpoint, "deid_patterns", None)).describe())
    return {"url": public_url(endpoint.base_url), "deidentification": masking}


def generate_endpoint(endpoint: Any, prompts: list[list[dict]], args: Any, audit_path: Any = None,
                      stage: str | None = None, record_ids: list[str] | None = None) -> list[list[str]]:
    """Sample through an OpenAI-compatible server: one request per sample (servers differ on `n`), all in
    flight at once up to the endpoint's concurrency; never cached (samples must differ). Prompts to another
    host are de-identified first (endpoint_deidentifier). audit_path: the stage's audit log (reward.audit),
    where each request sent gets a line (record id from `record_ids`, masked counts), never its text."""
    import asyncio

    from reward.audit import AuditLog
    from reward.client import ChatClient, ChatRequest, JudgeError
    from reward.urls import public_url

    # The client applies the host policy (reward.hosts) with the endpoint's allowed_hosts, where it has them,
    # and names `endpoint.base_url` / `endpoint.allowed_hosts` when it refuses.
    client = ChatClient(base_url=endpoint.base_url, model=endpoint.model, api_key_env=endpoint.api_key_env,
                        max_concurrency=endpoint.max_concurrency, parse_retries=0,
                        allowed_hosts=getattr(endpoint, "allowed_hosts", None), config_name="endpoint",
                        audit=AuditLog(audit_path, stage=stage) if audit_path is not None else None)
    deid = endpoint_deidentifier(endpoint)
    counts: list[dict[str, int] | None] = [None] * len(prompts)
    if deid is not None:
        logger.info("prompts to %s are de-identified (%s)", public_url(endpoint.base_url),
                    ", ".join(deid.pattern_names))
        counts = [{} for _ in prompts]
        prompts = [deid.mask_messages(m, c) for m, c in zip(prompts, counts)]
    ids = record_ids if record_ids is not None else [None] * len(prompts)
    sampling = {"temperature": args.temperature, "top_p": args.top_p, "max_tokens": args.max_new_tokens}
    requests = [ChatRequest(messages=m, sampling=sampling, record_id=i, masked=c)
                for m, c, i in zip(prompts, counts, ids) for _ in range(args.samples_per_prompt)]
    results = asyncio.run(client.chat_many(requests))
    failed = [r for r in results if isinstance(r, JudgeError)]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(results)} generation requests to "
                           f"{public_url(endpoint.base_url)} failed; the first: {failed[0]}")
    texts = [r.text.strip() for r in results]
    k = args.samples_per_prompt
    return [texts[i:i + k] for i in range(0, len(texts), k)]
