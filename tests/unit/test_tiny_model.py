"""The tiny model builder: deterministic, cached, an ordinary model folder with a marker-less ChatML template."""

from __future__ import annotations

import hashlib

from transformers import AutoModelForCausalLM, AutoTokenizer

from rlmed.models.tiny import TinySpec, build_tiny

TEXTS = ["小儿发热时要注意补液。", "手足口病多见于5岁以下儿童。", "湿疹患儿应保持皮肤湿润。"] * 20


def digest(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_same_settings_give_byte_identical_folders_without_the_cache(tmp_path, monkeypatch):
    spec = TinySpec(vocab_size=400, hidden_size=32, num_heads=2, num_kv_heads=1, intermediate_size=64)
    monkeypatch.setenv("RLMED_CACHE_DIR", str(tmp_path / "cache1"))
    a = build_tiny(spec, TEXTS, tmp_path / "a")
    monkeypatch.setenv("RLMED_CACHE_DIR", str(tmp_path / "cache2"))  # a cold cache: built again from scratch
    b = build_tiny(spec, TEXTS, tmp_path / "b")
    assert digest(a) == digest(b)
    assert "model.safetensors" in digest(a) and "tokenizer.json" in digest(a)


def test_second_build_comes_from_the_cache(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("RLMED_CACHE_DIR", str(tmp_path / "cache"))
    spec = TinySpec(vocab_size=400, hidden_size=32, num_heads=2, num_kv_heads=1, intermediate_size=64)
    build_tiny(spec, TEXTS, tmp_path / "a")
    with caplog.at_level("INFO"):
        build_tiny(spec, TEXTS, tmp_path / "b")
    assert "tiny model from cache" in caplog.text
    other = build_tiny(TinySpec(vocab_size=400, hidden_size=32, num_heads=2, num_kv_heads=1,
                                intermediate_size=64, seed=1), TEXTS, tmp_path / "c")
    assert digest(other)["model.safetensors"] != digest(tmp_path / "a")["model.safetensors"]


def test_folder_loads_by_path_like_a_downloaded_model(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert model.config.model_type == "qwen2"
    assert tokenizer.eos_token == "<|im_end|>" and model.config.eos_token_id == tokenizer.eos_token_id
    assert "{% generation" not in tokenizer.chat_template
    text = "孩子发烧39度怎么办？"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text  # byte-level: lossless on Chinese
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
