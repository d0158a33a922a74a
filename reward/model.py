"""A trained reward model (sequence classification with one scalar output) as a reward source.

The model reads prompt + completion rendered exactly as a chat (the tokenizer's chat template when it has one),
and its scalar logit at the last real token is the value: higher is better, unbounded, on whatever scale the
Bradley-Terry training produced (methods.md §3). Combine it with other sources through reward.composite, whose
batch normalisation takes care of the scale.

Padding is on the right and the model's pad_token_id is set, so the head reads each row's own last token and
positions are the same as without padding: batched scores equal one-at-a-time scores. Truncation keeps the END
of long inputs (the completion), because the head reads the last token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from typing import Any, Iterator, Sequence

from reward.base import Sample, Score

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def whole_weights() -> Iterator[None]:
    """Load with any active ZeRO-3 config suspended: inside a ZeRO-3 training process (PPO) from_pretrained
    would partition the weights across ranks, but this model runs its own forward on each rank's samples."""
    try:
        from transformers.integrations import deepspeed as hf_deepspeed
    except ImportError:
        yield
        return
    weak_ref = getattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", None)
    active = weak_ref() if weak_ref is not None else None
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if active is not None:
            hf_deepspeed.set_hf_deepspeed_config(active)


def _load_scalar_model(path: str, dtype: Any, chain: tuple[str, ...] = ()) -> Any:
    """A full reward model folder, or a LoRA adapter folder: its recorded base (a full model, or another adapter
    folder loaded the same way: rlmed records a chain of LoRA stages so) with the adapter merged in.

    `chain`: the adapter folders above `path`, outermost first. A MoLE model is refused: its routed experts depend
    on each token, so no merged backbone carries them, and peft alone would load it as plain LoRA without them.
    """
    import json
    from pathlib import Path

    from transformers import AutoModelForSequenceClassification

    folder = Path(path)
    if (folder / "mole_config.json").is_file() or (folder / "experts" / "mole_config.json").is_file():
        via = f" (the base of {' -> '.join(chain)})" if chain else ""
        raise ValueError(f"'{path}'{via} is a MoLE model (mole_config.json); a scalar-head reward model on it would "
                         "lose its routed experts, which cannot be merged into the weights. Train the reward model "
                         "from the model the MoLE stage started from, or from any full or LoRA model folder")
    adapter_config = folder / "adapter_config.json"
    if not adapter_config.is_file():
        # The base of an adapter may be a causal LM: its new head must have one output, as the adapter's has.
        extra = {"num_labels": 1} if chain else {}
        return AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype, **extra)
    from peft import PeftConfig, PeftModel

    base = json.loads(adapter_config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{adapter_config} records no base_model_name_or_path")
    visited = (*chain, path)
    if any(base == seen or (Path(base).exists() and Path(base).resolve() == Path(seen).resolve())
           for seen in visited):
        raise ValueError(f"the adapter chain loops: {' -> '.join(visited)} -> {base}")
    model = _load_scalar_model(base, dtype, visited)
    config = PeftConfig.from_pretrained(path)
    if config.task_type == "CAUSAL_LM":
        # A causal LM's adapter in the chain (the reward model was trained on a LoRA stage's output): it adapts the
        # backbone only, and peft's causal-LM wrapper would want generation methods a scalar-head model lacks.
        config.task_type = None
    return PeftModel.from_pretrained(model, path, config=config).merge_and_unload()


class RewardModelLoadError(RuntimeError):
    """The reward model or its tokenizer could not be loaded from the given path or Hub id."""


class RewardModel:
    """Scores samples with AutoModelForSequenceClassification (num_labels=1) loaded lazily on the first score.

    path: a local model directory or a Hub id. device: "cuda", "cpu", ... or None for cuda when available.
    dtype: "auto" (the checkpoint's dtype) or a torch dtype name such as "bfloat16" or "float32".
    """

    def __init__(
        self, path: str, batch_size: int = 8, max_length: int = 2048, device: str | None = None, dtype: str = "auto"
    ) -> None:
        if batch_size < 1 or max_length < 1:
            raise ValueError(f"batch_size and max_length must be >= 1, got batch_size={batch_size}, "
                             f"max_length={max_length}")
        self.path, self.batch_size, self.max_length = str(path), batch_size, max_length
        self.device_name, self.dtype = device, dtype
        self._model: Any = None
        self._tokenizer: Any = None
        self._device: Any = None
        self._load_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RewardModel(path={self.path!r}, batch_size={self.batch_size})"

    def load(self) -> None:
        """Load tokenizer and model now (score calls this on first use); RewardModelLoadError on failure."""
        with self._load_lock:
            if self._model is not None:
                return
            import torch
            from transformers import AutoTokenizer

            # Each rank of a multi-GPU job scores on its own GPU, not all on cuda:0.
            local = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
            device = torch.device(self.device_name or (local if torch.cuda.is_available() else "cpu"))
            if self.dtype == "auto":
                dtype: Any = "auto"
            else:
                dtype = getattr(torch, self.dtype, None)
                if not isinstance(dtype, torch.dtype):
                    raise ValueError(f"dtype must be 'auto' or a torch dtype name, got {self.dtype!r}")
            try:
                tokenizer = AutoTokenizer.from_pretrained(self.path)
                with whole_weights():
                    model = _load_scalar_model(self.path, dtype)
            except Exception as exc:  # transformers raises OSError, ValueError, HF errors...: report them alike
                raise RewardModelLoadError(
                    f"could not load a sequence-classification reward model from {self.path!r}: {exc}"
                ) from exc
            if model.config.num_labels != 1:
                raise RewardModelLoadError(
                    f"{self.path!r} has num_labels={model.config.num_labels}; a reward model needs one scalar output"
                )
            if tokenizer.pad_token_id is None:
                # Padding needs a pad id; eos is the usual stand-in. Right padding keeps this safe unless the
                # text itself ends with eos, in which case batched and single scoring still agree.
                logger.warning("tokenizer of %s has no pad token; using eos as pad", self.path)
                tokenizer.pad_token = tokenizer.eos_token
            tokenizer.padding_side = "right"
            tokenizer.truncation_side = "left"
            model.config.pad_token_id = tokenizer.pad_token_id
            model.to(device).eval()
            self._tokenizer, self._model, self._device = tokenizer, model, device
            logger.info("loaded reward model %s on %s", self.path, device)

    def render(self, sample: Sample) -> str:
        """The text the model reads: the dialogue plus the completion as the assistant's turn."""
        messages = [dict(m) for m in sample.prompt] + [{"role": "assistant", "content": sample.completion}]
        if getattr(self._tokenizer, "chat_template", None):
            return self._tokenizer.apply_chat_template(messages, tokenize=False)
        # No template: a plain transcript, the same for training and scoring as long as both use this class.
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages)

    def _score_batch(self, texts: list[str]) -> list[float]:
        import torch

        has_template = bool(getattr(self._tokenizer, "chat_template", None))
        encoded = self._tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
            # A chat template already writes its special tokens; adding BOS again would shift the input.
            add_special_tokens=not has_template,
        ).to(self._device)
        with torch.inference_mode():
            logits = self._model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).logits
        return [float(v) for v in logits[:, 0].float().cpu()]

    def score_batch_sync(self, samples: Sequence[Sample]) -> list[float]:
        """Scalar scores for samples, in order, computed in batches of `batch_size` (blocking)."""
        self.load()
        texts = [self.render(s) for s in samples]
        values: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            values.extend(self._score_batch(texts[start : start + self.batch_size]))
        return values

    async def score(self, samples: Sequence[Sample]) -> list[Score]:
        """One Score per sample with the raw logit as value; the forward passes run in a worker thread so the
        event loop (e.g. a judge running alongside in a Composite) is not blocked."""
        if not samples:
            return []
        values = await asyncio.to_thread(self.score_batch_sync, samples)
        return [Score(value=v, parts={"reward_model": v}) for v in values]
