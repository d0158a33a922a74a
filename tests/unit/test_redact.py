"""Secrets are redacted from configs: by key name, and wherever a secret environment value appears."""

from __future__ import annotations

from rlmed.tracking import REDACTED, is_secret_key, redact


def test_secret_keys_are_whole_name_parts():
    for key in ("hub_token", "api_key", "OPENAI_API_KEY", "db_password", "auth_token", "secret_key"):
        assert is_secret_key(key), key
    for key in ("max_tokens", "num_tokens", "api_key_env", "hub_private_repo", "keyword", "tokenizer"):
        assert not is_secret_key(key), key


def test_redact_by_key_and_by_environment_value(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-rlmed-test-0123456789")
    config = {"trainer": {"hub_token": "hf_abc", "max_tokens": 7},
              "reward": {"api_key_env": "OPENAI_API_KEY", "base_url": "http://x/?key=sk-rlmed-test-0123456789"},
              "list": ["sk-rlmed-test-0123456789", 3]}
    assert redact(config) == {"trainer": {"hub_token": REDACTED, "max_tokens": 7},
                              "reward": {"api_key_env": "OPENAI_API_KEY", "base_url": f"http://x/?key={REDACTED}"},
                              "list": [REDACTED, 3]}
