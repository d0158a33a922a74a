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
                              "reward": {"api_key_env": "OPENAI_API_KEY", "base_url": "http://x"},
                              "list": [REDACTED, 3]}


def test_urls_lose_user_info_and_query_that_no_environment_variable_names():
    # Manifests and W&B configs are built from this: a gateway's key in the URL must not reach either.
    config = {"judge": {"base_url": "https://alice:s3cr3t-pw@judge.example.org:8443/v1/?api-key=gw-77a1&x=1"},
              "endpoint": {"base_url": "http://127.0.0.1:8000/v1"}, "note": "see https://example.org/a?b=c"}
    out = redact(config)
    assert out["judge"]["base_url"] == "https://judge.example.org:8443/v1"
    assert out["endpoint"]["base_url"] == "http://127.0.0.1:8000/v1"  # nothing secret in it: kept as written
    assert "s3cr3t" not in str(out) and "gw-77a1" not in str(out)


def test_a_url_that_does_not_parse_is_cut_by_pattern_not_an_error():
    # De-identified text can turn a URL's host into a placeholder (http://[IP地址]/v1), which urlsplit refuses;
    # a run's manifest must still be written, without the user-info and query.
    out = redact({"first_errors": ["http://bob:pw-9@[IP地址]:8000/v1?api-key=gw-1 refused"]})
    assert out == {"first_errors": ["http://[ip地址]:8000/v1"]}
