"""Generation through `endpoint.base_url` de-identifies prompts bound for another host and leaves those for a
server on this machine unchanged. Real HTTP: a recording server on loopback, and the same server on this
machine's network address, which does not look local (the closest to a remote host a test can reach)."""

from __future__ import annotations

import json

import socket
import threading
from types import SimpleNamespace

import pytest

from rlmed.generation import endpoint_deidentifier, generate_endpoint
from tests.reward.server import JudgeServer, _HTTPServer, _make_handler

PHONE = "13800138000"
ID_NUMBER = "110101201903051234"
PROMPT = [{"role": "system", "content": "你是一名儿科医生。"},
          {"role": "user", "content": f"孩子发烧38.5℃，我的电话{PHONE}，身份证号{ID_NUMBER}。"}]
ARGS = SimpleNamespace(temperature=1.0, top_p=1.0, max_new_tokens=16, samples_per_prompt=2)


def endpoint(base_url: str, **extra) -> SimpleNamespace:
    """The fields generate_endpoint reads of the ai_feedback stage's `endpoint:` block."""
    return SimpleNamespace(base_url=base_url, model="policy", api_key_env=None, max_concurrency=4, **extra)


def network_address() -> str | None:
    """This machine's address on its network (no packet is sent), or None when it has only loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


class NetworkServer(JudgeServer):
    """The recording test server, listening on a network address instead of 127.0.0.1."""

    def __init__(self, address: str) -> None:
        super().__init__(model="policy")
        self._httpd.server_close()
        self._httpd = _HTTPServer((address, 0), _make_handler(self))
        self.port = self._httpd.server_address[1]
        self.base_url = f"http://{address}:{self.port}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)


def test_prompts_are_masked_for_a_remote_host_only():
    for local in ("http://127.0.0.1:8000/v1", "http://localhost:8000/v1", "http://[::1]:8000/v1"):
        assert endpoint_deidentifier(endpoint(local)) is None, local
    for remote in ("https://api.example.com/v1", "http://10.0.0.5:8000/v1", "http://gpu-node-3:8000/v1"):
        deid = endpoint_deidentifier(endpoint(remote))
        assert deid is not None, remote
        masked = deid.mask_messages(PROMPT)[-1]["content"]
        assert PHONE not in masked and ID_NUMBER not in masked and "38.5℃" in masked
    # The judge's switches, where an endpoint carries them: off on purpose, or an extra pattern.
    assert endpoint_deidentifier(endpoint("https://api.example.com/v1", deidentify=False)) is None
    extra = endpoint_deidentifier(endpoint("https://api.example.com/v1", deid_patterns={"mrn": r"MRN-\d{6}"}))
    assert extra.mask("MRN-778899") == "[mrn]"
    # The host policy (reward.hosts) refuses before anything is sent, naming the endpoint's keys, not a judge's.
    with pytest.raises(ValueError, match=r"endpoint\.base_url .*endpoint\.allowed_hosts"):
        generate_endpoint(endpoint("http://10.0.0.5:8000/v1"), [PROMPT], ARGS)


def test_generation_sends_masked_prompts_to_another_host_and_unchanged_ones_locally(tmp_path):
    with JudgeServer(model="policy") as local:
        answers = generate_endpoint(endpoint(local.base_url), [PROMPT], ARGS)
        assert len(answers) == 1 and len(answers[0]) == 2
        assert [body["messages"] for body in local.received] == [PROMPT, PROMPT]  # nothing left the machine
    address = network_address()
    if address is None:
        pytest.skip("no network address on this machine to stand in for a remote host")
    with NetworkServer(address) as remote:
        # Plain HTTP to a non-local host must be listed (reward.hosts), as for a vLLM node on a trusted network.
        allowed = [f"http://{address}:{remote.port}"]
        audit = tmp_path / "audit" / "fb.rank0.jsonl"
        answers = generate_endpoint(endpoint(remote.base_url, allowed_hosts=allowed), [PROMPT], ARGS,
                                    audit_path=audit, stage="fb", record_ids=["p7"])
        assert len(answers[0]) == 2 and remote.count == 2
        # The audit log has a line per request sent, with what was masked and nothing of the text.
        lines = [json.loads(line) for line in audit.read_text(encoding="utf-8").splitlines()]
        assert [(line["stage"], line["record"], line["host"]) for line in lines] == [("fb", "p7", address)] * 2
        assert all(line["masked"].get("mobile") == 1 and line["masked"].get("id_card") == 1 for line in lines)
        assert PHONE not in audit.read_text(encoding="utf-8") and "38.5" not in audit.read_text(encoding="utf-8")
        for body in remote.received:
            sent = "".join(m["content"] for m in body["messages"])
            assert PHONE not in sent and ID_NUMBER not in sent
            assert "[电话]" in sent and "[身份证号]" in sent and "38.5℃" in sent
