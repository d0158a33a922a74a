"""Generation settings under which `generate` draws from softmax(logits / T), cut only by top-k / top-p.

Why: transformers fills every generation field a call leaves unset (None) from the model's own
generation_config.json, and chat models ship sampling defaults there (Qwen2.5-Instruct and Baichuan2-Chat a
repetition_penalty of 1.05; others no_repeat_ngram_size, min_p, bad_words_ids, ...). PPO's samples then came
from a penalised distribution while its old and reference log-probs are plain softmax(logits / T), and
"greedy" evaluation was not the argmax. Setting neutral values in the call does not suffice: for several
processors (min_p, bad_words_ids, forced BOS/EOS, sequence_bias, watermarking, ...) the neutral value *is*
None, which `generate` reads as "unset". So generation runs with the model's generation_config replaced by one
that holds nothing distribution-changing (`generate_with`, `neutral_model_defaults`), and the file is left
untouched for serving.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

# Every transformers.GenerationConfig field that changes which token is drawn (logits processors, decoding
# modes, prompt rewriting) or cuts an answer short, at the value that leaves plain sampling alone
# (min_new_tokens None, not 0: `generate` turns any value into a min_length and a processor).
# tests/unit/test_exact_sampling.py fails when a transformers release adds a field that is neither here,
# in CALL_FIELDS nor in HARMLESS, so a new processor cannot slip in unnoticed.
NEUTRAL: dict[str, Any] = {
    "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "min_p": None,
    "top_h": None, "bad_words_ids": None, "force_words_ids": None, "constraints": None, "suppress_tokens": None,
    "begin_suppress_tokens": None, "sequence_bias": None, "forced_bos_token_id": None, "forced_eos_token_id": None,
    "min_length": 0, "min_new_tokens": None, "exponential_decay_length_penalty": None, "guidance_scale": None,
    "watermarking_config": None, "renormalize_logits": False, "remove_invalid_values": False, "num_beams": 1,
    "num_beam_groups": 1, "diversity_penalty": 0.0, "penalty_alpha": None, "dola_layers": None,
    "token_healing": False, "use_mtp": False, "prompt_lookup_num_tokens": None, "assistant_early_exit": None,
    "assistant_ensemble_weight": None, "speculation_type": None, "stop_strings": None, "max_time": None,
}
# Set by every call here: the sampling the caller asked for, and where answers end.
CALL_FIELDS = ("do_sample", "temperature", "top_k", "top_p", "max_new_tokens", "num_return_sequences",
               "eos_token_id", "pad_token_id")
# Fields that do not change what is drawn: token ids, caches, outputs, speed, beam-only and assistant-only knobs.
HARMLESS = frozenset({
    "_from_model_config", "transformers_version", "bos_token_id", "decoder_start_token_id", "max_length",
    "length_penalty", "early_stopping", "low_memory", "use_cache", "cache_implementation", "cache_config",
    "max_cache_len", "compile_config", "disable_compile", "continuous_batching_config", "prefill_chunk_size",
    "output_attentions", "output_hidden_states", "output_scores", "output_logits", "return_dict_in_generate",
    "is_assistant", "num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold",
    "assistant_lookbehind", "target_lookbehind", "max_matching_ngram_size",
})


def sampling_config(*, temperature: float, top_p: float = 1.0, top_k: int | None = None, max_new_tokens: int,
                    eos_token_id: int | list[int] | None, pad_token_id: int | None, num_return_sequences: int = 1,
                    model_defaults: Any = None) -> Any:
    """A GenerationConfig for `generate_with`: temperature 0 is greedy (argmax of the plain logits), else
    sampling from softmax(logits / temperature) with top-k (0 or None: off) and top-p (1: off) and nothing else.

    With `model_defaults` (a model's own GenerationConfig) the fields set here still win, and every other field
    is the model's (top_k too, when None) — only for callers that were asked to use the model's settings
    (evaluate's `model_generation_config`)."""
    from transformers import GenerationConfig

    greedy = temperature <= 0
    call = {"do_sample": not greedy, "max_new_tokens": max_new_tokens, "num_return_sequences": num_return_sequences,
            "eos_token_id": eos_token_id, "pad_token_id": pad_token_id}
    if not greedy:
        call.update(temperature=temperature, top_p=top_p)
        if top_k is not None or model_defaults is None:
            call["top_k"] = top_k or 0  # None would be filled with transformers' default of 50
    if model_defaults is None:
        return GenerationConfig(**NEUTRAL, **call)
    config = GenerationConfig(**call)
    config.update(**model_defaults.to_dict(), defaults_only=True)  # as `generate` would fill it
    return config


def describe(config: Any) -> dict[str, Any]:
    """The fields a config sets, as JSON-ready values (for results files and logs)."""
    import json

    settings = {k: v for k, v in config.to_diff_dict().items()
                if k not in ("transformers_version", "_from_model_config")}
    return json.loads(json.dumps(settings, default=str))


def _generating_model(model: Any) -> Any:
    """The transformers model whose `generate` runs: peft's wrapper hands generation to the model it wraps."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@contextmanager
def _generation_config_replaced(model: Any, config: Any) -> Iterator[None]:
    target = _generating_model(model)
    original = target.generation_config
    target.generation_config = config
    try:
        yield
    finally:
        target.generation_config = original


def generate_with(model: Any, config: Any, **inputs: Any) -> Any:
    """`model.generate(**inputs)` under `config` alone: the model's generation_config is replaced by `config`
    for the call, so no field `config` leaves unset is filled from the model's file."""
    with _generation_config_replaced(model, config):
        return model.generate(**inputs, generation_config=config)


@contextmanager
def neutral_model_defaults(model: Any) -> Iterator[None]:
    """For generation that another library configures (trl's GRPO/RLOO): inside, the model's generation_config
    is a copy whose distribution-changing fields are neutral, so whatever that library leaves unset cannot pick
    up the file's penalties; token ids and the library's own settings stay. The original is back on exit, so
    the saved model keeps its file."""
    original = _generating_model(model).generation_config
    neutral = original.__class__.from_dict(original.to_dict())
    for key, value in NEUTRAL.items():
        setattr(neutral, key, value)
    with _generation_config_replaced(model, neutral):
        yield
