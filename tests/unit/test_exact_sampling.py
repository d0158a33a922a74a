"""Sampling ignores the settings a model ships in its generation_config.json (issue 14, defect 2).

transformers fills every generation field a call leaves unset from the model's own generation_config.json, so a
chat model's repetition_penalty (1.05 in Qwen2.5-Instruct) and friends used to act on PPO samples and on
"greedy" evaluation. Here a tiny model carries a poisoned file; rlmed's generation must sample softmax(logits/T)
cut only by top-k/top-p, and its greedy decoding must be the argmax of the plain logits.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

# Distribution-changing settings a model may ship; each would add a logits processor if it leaked.
POISON = {"repetition_penalty": 1.5, "no_repeat_ngram_size": 2, "min_p": 0.2, "typical_p": 0.9,
          "epsilon_cutoff": 3e-4, "eta_cutoff": 3e-4, "min_new_tokens": 4,
          "exponential_decay_length_penalty": [2, 1.5], "renormalize_logits": True, "bad_words_ids": [[7]],
          "suppress_tokens": [8], "top_k": 3, "temperature": 0.5, "do_sample": True}
# What rlmed's sampling may build: the warpers its own log-probs (or its arguments) account for.
ALLOWED = {"TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper"}
PROMPTS = [[{"role": "user", "content": "孩子发烧三天了怎么办？"}], [{"role": "user", "content": "咳嗽有痰要吃药吗？"}]]


@pytest.fixture(scope="module")
def talkative_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model with an untied random output head: with tied embeddings a random model's argmax only
    repeats the prompt's last token ("\\n"), which would make greedy comparisons trivial."""
    from rlmed.models.loading import load_causal_lm

    out = tmp_path_factory.mktemp("talkative") / "model"
    shutil.copytree(tiny_model, out)
    model = load_causal_lm(str(tiny_model), dtype="float32")
    model.config.tie_word_embeddings = False
    torch.manual_seed(0)
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
    model.save_pretrained(out)
    return out


def poisoned_copy(model_dir: Path, out: Path, **extra) -> Path:
    """A copy of `model_dir` whose generation_config.json carries POISON (and `extra`)."""
    shutil.copytree(model_dir, out)
    path = out / "generation_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config.update(POISON, **extra)
    path.write_text(json.dumps(config), encoding="utf-8")
    return out


@pytest.fixture
def processors_built(monkeypatch) -> list[tuple[list[str], object]]:
    """Records, for every `generate` call in the test, the logits processors transformers built and the
    generation config they were built from."""
    from transformers.generation.utils import GenerationMixin

    original = GenerationMixin._get_logits_processor
    seen: list[tuple[list[str], object]] = []

    def spy(self, *args, **kwargs):
        processors = original(self, *args, **kwargs)
        config = kwargs.get("generation_config", args[0] if args else None)
        seen.append(([type(p).__name__ for p in processors], config))
        return processors

    monkeypatch.setattr(GenerationMixin, "_get_logits_processor", spy)
    return seen


def assert_plain_sampling(seen: list[tuple[list[str], object]]) -> None:
    assert seen, "no generate call was observed"
    for names, config in seen:
        assert set(names) <= ALLOWED, names
        assert config.num_beams in (None, 1) and not config.min_new_tokens and not config.min_length


def settings(**overrides) -> SimpleNamespace:
    base = dict(samples_per_prompt=1, temperature=0.0, top_p=1.0, batch_size=2, max_new_tokens=12, dtype="float32")
    return SimpleNamespace(**{**base, **overrides})


def plain_greedy(model_dir: Path, messages: list[dict], steps: int) -> str:
    """Greedy decoding by hand: the argmax of the model's plain logits, one token at a time."""
    from rlmed.data.chat import render_prompt
    from rlmed.models.loading import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(str(model_dir))
    model = load_causal_lm(str(model_dir), dtype="float32").eval()
    ids = tokenizer(render_prompt(tokenizer, messages), return_tensors="pt", add_special_tokens=False)["input_ids"]
    start = ids.shape[1]
    with torch.no_grad():
        for _ in range(steps):
            token = model(ids).logits[:, -1].argmax(dim=-1, keepdim=True)
            ids = torch.cat([ids, token], dim=1)
            if token.item() == tokenizer.eos_token_id:
                break
    return tokenizer.decode(ids[0, start:], skip_special_tokens=True).strip()


def test_greedy_generation_is_the_argmax_of_the_plain_logits(tmp_path, talkative_model, processors_built):
    from rlmed.generation import generate_hf

    poisoned = poisoned_copy(talkative_model, tmp_path / "m")
    expected = [plain_greedy(poisoned, m, 12) for m in PROMPTS]
    assert all(expected)
    # One prompt per batch: left padding would only add float noise to the comparison.
    got = [a[0] for a in generate_hf(str(poisoned), PROMPTS, settings(batch_size=1), seed=0)]
    assert got == expected
    assert_plain_sampling(processors_built)


def test_the_poison_would_change_greedy_decoding(tmp_path, talkative_model):
    """The control for the test above: left to itself, `generate` applies the file's settings."""
    from rlmed.data.chat import render_prompt
    from rlmed.models.loading import load_causal_lm, load_tokenizer

    poisoned = poisoned_copy(talkative_model, tmp_path / "m")
    tokenizer = load_tokenizer(str(poisoned))
    model = load_causal_lm(str(poisoned), dtype="float32").eval()
    ids = tokenizer(render_prompt(tokenizer, PROMPTS[0]), return_tensors="pt", add_special_tokens=False)["input_ids"]
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12)
    text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
    assert text != plain_greedy(poisoned, PROMPTS[0], 12)


def test_sampling_applies_only_temperature_and_top_p(tmp_path, tiny_model, processors_built):
    """ai_feedback's and the held-out answers' path: its own temperature/top_p, no top-k it did not ask for."""
    from rlmed.generation import generate_hf

    answers = generate_hf(str(poisoned_copy(tiny_model, tmp_path / "m")), PROMPTS,
                          settings(temperature=0.7, top_p=0.9, samples_per_prompt=2), seed=0)
    assert [len(a) for a in answers] == [2, 2]
    assert_plain_sampling(processors_built)
    for names, config in processors_built:
        assert config.do_sample and config.temperature == 0.7 and config.top_p == 0.9 and not config.top_k
        assert names == ["TemperatureLogitsWarper", "TopPLogitsWarper"]


def test_model_generation_config_is_used_only_when_asked(tmp_path, tiny_model, processors_built):
    from rlmed.generation import generate_hf

    used: dict = {}
    generate_hf(str(poisoned_copy(tiny_model, tmp_path / "m")), PROMPTS[:1],
                settings(model_generation_config=True), seed=0, used=used)
    names, _ = processors_built[-1]
    assert "RepetitionPenaltyLogitsProcessor" in names and "NoRepeatNGramLogitsProcessor" in names
    assert used["model_generation_config"] is True and used["repetition_penalty"] == 1.5
    assert used["do_sample"] is False  # the stage's own settings still win over the file's


def test_every_generation_field_is_classified():
    """A transformers release that adds a GenerationConfig field must be looked at: it may change the draw."""
    from transformers import GenerationConfig

    from rlmed.sampling import CALL_FIELDS, HARMLESS, NEUTRAL

    fields = set(vars(GenerationConfig()))
    unknown = fields - set(NEUTRAL) - set(CALL_FIELDS) - HARMLESS
    assert not unknown, f"classify these in rlmed/sampling.py (NEUTRAL if they can change what is drawn): {unknown}"
    assert not set(NEUTRAL) & HARMLESS and not set(NEUTRAL) - fields  # no stale names either


def test_neutral_model_defaults_are_restored(tiny_model, tmp_path):
    """trl's path: inside, the model's config is neutral but keeps its token ids; outside, it is the model's."""
    from rlmed.models.loading import load_causal_lm
    from rlmed.sampling import neutral_model_defaults

    model = load_causal_lm(str(poisoned_copy(tiny_model, tmp_path / "m")), dtype="float32")
    original = model.generation_config
    with neutral_model_defaults(model):
        inside = model.generation_config
        assert inside.repetition_penalty == 1.0 and inside.min_p is None and inside.bad_words_ids is None
        assert inside.eos_token_id == original.eos_token_id and inside.top_k == 3  # trl sets top_k itself
    assert model.generation_config is original and original.repetition_penalty == 1.5


def test_model_generation_config_fills_what_the_stage_does_not_set(tiny_model, tmp_path):
    from rlmed.generation import generate_hf

    used: dict = {}
    generate_hf(str(poisoned_copy(tiny_model, tmp_path / "m")), PROMPTS[:1],
                settings(temperature=0.7, top_p=0.9, model_generation_config=True), seed=0, used=used)
    assert used["top_k"] == 3 and used["min_p"] == 0.2  # the file's, where the stage has no setting
    assert used["temperature"] == 0.7 and used["top_p"] == 0.9  # the stage's own settings win
