"""Secrets stay out of everything a ChatClient shows: errors (text, args, chain, what they reference), reprs,
logs. Against a real local HTTP server that behaves like the servers that leaked: a 401 whose message echoes
the Authorization header, a gateway that echoes part of the key, a base_url with user-info and a query key."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import pickle
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import openai
import pytest

from reward.client import ChatClient, ChatRequest, JudgeError, redact
from tests.reward.server import free_port

try:
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]

KEY = "sk-proj-Zq81XwT4mLr0Vb7nKc2JhYs9GdPfUa3oE6iQ"  # 44 characters, as in the issue
MSG = [{"role": "user", "content": "孩子发烧38.5度怎么办？"}]
# What openai puts before the server's message in str(exc), the text that is cut at 300 characters.
PREFIX = len("Error code: 401 - ")

Responder = Callable[[str, dict[str, str], dict[str, Any]], "tuple[int, dict[str, Any]]"]


class EchoServer:
    """A local chat server whose answer is `respond(path, headers, body) -> (status, JSON payload)`; it keeps
    the paths and headers it saw. Unlike JudgeServer it accepts a query on the path (`?api-key=`)."""

    def __init__(self, respond: Responder) -> None:
        self.paths: list[str] = []
        self.headers: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                outer.paths.append(self.path)
                outer.headers.append({k.lower(): v for k, v in self.headers.items()})
                status, payload = respond(self.path, outer.headers[-1], body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> "EchoServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def ok(path: str, headers: dict[str, str], body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return 200, {"choices": [{"message": {"role": "assistant", "content": "好的"}}],
                 "usage": {"prompt_tokens": 1, "completion_tokens": 1}}


def echo_401(path: str, headers: dict[str, str], body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """A 401 whose message repeats the Authorization header after `pad` characters (the user message)."""
    pad = int(body["messages"][-1]["content"])
    return 401, {"error": {"message": "x" * pad + f" Authorization: {headers['authorization']} is not valid",
                           "type": "invalid_request_error"}}


def pieces(secret: str, n: int = 8) -> set[str]:
    return {secret[i:i + n] for i in range(len(secret) - n + 1)}


def leaks(text: str, secret: str = KEY) -> list[str]:
    """Every 8-character piece of `secret` found in `text`."""
    return sorted(p for p in pieces(secret) if p in text)


def reachable(root: object, limit: int = 20000) -> Iterator[object]:
    """Objects reachable from `root` by references, not through frames or tracebacks (what a raised error's
    frames hold is the caller's business; what the error itself carries travels with it), nor through
    classes, modules or functions (shared by everything)."""
    seen, todo = {id(root)}, [root]
    skip = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.FrameType,
            types.TracebackType, types.CodeType)
    while todo and len(seen) < limit:
        obj = todo.pop()
        yield obj
        for ref in gc.get_referents(obj):
            if id(ref) not in seen and not isinstance(ref, skip):
                seen.add(id(ref))
                todo.append(ref)


def assert_clean(err: BaseException, secrets: list[str]) -> None:
    """No secret, nor an 8-character piece of one, in the error's text, args or chain; no request, response or
    original exception reachable from it."""
    shown = [str(err), repr(err), *map(str, err.args)]
    for secret in secrets:
        assert not [t for t in shown if leaks(t, secret)], secret
    assert err.__cause__ is None and err.__context__ is None
    texts = []
    for obj in reachable(err):
        assert not isinstance(obj, (httpx.Request, httpx.Response, httpx.Headers, openai.APIError)), type(obj)
        if isinstance(obj, (str, bytes)):
            texts.append(obj if isinstance(obj, str) else obj.decode("latin-1"))
    for secret in secrets:
        assert not [t for t in texts if leaks(t, secret)], secret


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("RLMED_SECRET_TEST_KEY", KEY)
    return "RLMED_SECRET_TEST_KEY"


def test_401_echoing_the_bearer_key_across_the_300_character_cut_leaks_no_piece_of_it(keyed):
    # Every split of "Bearer <key>" by the cut at 300, then a few where it lies wholly inside; the old code cut
    # first and replaced the whole key after, which a cut key no longer matches (43 of 44 characters stayed).
    start = 300 - PREFIX - len(" Authorization: Bearer ") - len(KEY)
    pads = list(range(start, start + len(KEY) + 1)) + [10, 150]
    with EchoServer(echo_401) as server:
        client = ChatClient(f"http://127.0.0.1:{server.port}/v1", "judge", api_key_env=keyed, progress=False)
        results = run(client.chat_many([ChatRequest([{"role": "user", "content": str(p)}]) for p in pads]))
    assert all(isinstance(r, JudgeError) and r.kind == "http" and r.status == 401 for r in results)
    assert all(h["authorization"] == f"Bearer {KEY}" for h in server.headers)  # the key was really echoed
    assert [str(err) for err in results if leaks(str(err))] == []
    for err in results:
        assert_clean(err, [KEY])
        assert "Authorization: ***" in str(err)  # redacted first: the cut now falls after the short "***"
        assert err.__traceback__ is None  # a result that travels does not pin the request's frames


def test_a_raised_http_error_keeps_no_original_exception_request_or_headers(keyed):
    with EchoServer(echo_401) as server:
        client = ChatClient(f"http://127.0.0.1:{server.port}/v1", "judge", api_key_env=keyed, progress=False)
        with pytest.raises(JudgeError) as info:
            run(client.chat([{"role": "user", "content": "5"}]))
    assert_clean(info.value, [KEY])
    assert pickle.loads(pickle.dumps(info.value)).status == 401  # it can cross a process boundary, whole


def test_a_fastapi_servers_detail_is_shown_redacted_and_a_validation_list_quoting_the_request_is_not(keyed):
    # transformers serve says why in `detail` only ({"detail": "The prompt has 2121 tokens, ..."}), which the
    # openai package leaves out of its text; FastAPI's 422 lists the fields it rejects with the request's values.
    def respond(path: str, headers: dict[str, str], body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if body["messages"][-1]["content"] == "long":
            return 400, {"detail": f"The prompt has 2121 tokens, but the model takes at most 2048 ({KEY})"}
        return 422, {"detail": [{"loc": ["body", "messages"], "input": body["messages"], "msg": "bad"}]}

    with EchoServer(respond) as server:
        client = ChatClient(f"http://127.0.0.1:{server.port}/v1", "judge", api_key_env=keyed, progress=False)
        asked = [ChatRequest([{"role": "user", "content": text}]) for text in ("long", "孩子发烧38.5度")]
        long, invalid = run(client.chat_many(asked))
    assert isinstance(long, JudgeError) and long.status == 400
    assert "Error code: 400 - The prompt has 2121 tokens, but the model takes at most 2048 (***)" in str(long)
    assert isinstance(invalid, JudgeError) and invalid.status == 422 and "发烧" not in str(invalid)
    for err in (long, invalid):
        assert_clean(err, [KEY])


def test_partial_keys_and_credential_values_are_redacted():
    token = "tok-9f8e7d6c5b4a3210"
    text = (f"key ...{KEY[-20:]} / {KEY[:12]}*** ; Authorization: Basic dXNlcjpwYXNz ; "
            f'{{"authorization": "Bearer {token}"}} ; x-api-key={token}& ; bearer {token}')
    out = redact(text, [KEY])
    assert not leaks(out) and token not in out and "dXNlcjpwYXNz" not in out
    assert redact("temperature 38.5, dose 500mg", [KEY]) == "temperature 38.5, dose 500mg"  # nothing else


def test_gateway_echoing_part_of_the_key_in_a_reply_that_does_not_parse(keyed):
    def gateway(path: str, headers: dict[str, str], body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        echoed = f"proxy: credentials {headers['authorization'][7:40]}… rejected upstream"
        return 200, {"choices": [{"message": {"role": "assistant", "content": echoed}}]}

    def strict(text: str) -> int:
        raise ValueError(f"not a score: {text}")

    with EchoServer(gateway) as server:
        client = ChatClient(f"http://127.0.0.1:{server.port}/v1", "judge", api_key_env=keyed, progress=False,
                            parse_retries=1)
        with pytest.raises(JudgeError, match="did not parse") as info:
            run(client.chat(MSG, parse=strict))
    assert_clean(info.value, [KEY])


def test_credentials_in_base_url_shown_nowhere_and_not_logged(keyed, caplog):
    user, password, qkey = "judgeuser", "pa55w0rd-s3cret", "q-secret-0123456789"
    caplog.set_level(logging.INFO)  # root at INFO, as `rlmed run` sets it: the HTTP library logs every URL there
    with EchoServer(ok) as server:
        url = f"http://{user}:{password}@127.0.0.1:{server.port}/v1?api-key={qkey}"
        client = ChatClient(url, "judge", api_key_env=keyed, progress=False, max_retries=0)
        assert run(client.chat(MSG)).text == "好的"  # the query reaches the server and the path is intact
        assert server.paths == [f"/v1/chat/completions?api-key={qkey}"]
        shown = [repr(client), client.base_url, json.dumps(client.stats.as_dict())]
    with pytest.raises(JudgeError) as info:  # the server is gone: a transport error names the endpoint
        run(client.chat([{"role": "user", "content": "再问一次"}]))
    assert client.base_url == f"http://127.0.0.1:{server.port}/v1"
    assert_clean(info.value, [password, qkey, KEY])
    logged = [r.getMessage() for r in caplog.records]
    for secret in (password, qkey, f"{user}:"):
        assert not [t for t in shown + logged if secret in t], secret


def test_http_library_logger_shows_public_urls_when_turned_back_on(caplog):
    # Whoever sets httpx2 back to INFO (dictConfig, a debugging session) still sees no credentials.
    logger = logging.getLogger(httpx.__name__)
    old = logger.level
    logger.setLevel(logging.INFO)
    caplog.set_level(logging.INFO)
    try:
        with EchoServer(ok) as server:
            url = f"http://u:pa55w0rd-s3cret@127.0.0.1:{server.port}/v1?sig=q-secret-0123456789"
            run(ChatClient(url, "judge", api_key_env=None, progress=False).chat(MSG))
    finally:
        logger.setLevel(old)
    lines = [r.getMessage() for r in caplog.records if r.name == httpx.__name__]
    assert lines and all("s3cret" not in line and "q-secret" not in line for line in lines)
    assert f"127.0.0.1:{server.port}/v1/chat/completions" in lines[0]


def test_rlmed_logging_setup_quiets_the_http_and_openai_loggers():
    from rlmed.cli import setup_logging

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    levels = {name: logging.getLogger(name).level for name in logging.root.manager.loggerDict}
    try:
        setup_logging(verbose=True)  # -v: root at DEBUG, and still none of these speak
        for name in ("httpx2", "httpx", "openai", "openai._base_client"):
            assert logging.getLogger(name).getEffectiveLevel() >= logging.WARNING, name
    finally:  # leave logging as the other tests expect it
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
        for name, old in levels.items():
            logging.getLogger(name).setLevel(old)


def test_connection_refused_error_names_only_the_public_url(keyed):
    url = f"http://user:pa55w0rd-s3cret@127.0.0.1:{free_port()}/v1?api-key=q-secret-0123456789"
    client = ChatClient(url, "judge", api_key_env=keyed, progress=False, max_retries=0)
    [err] = run(client.chat_many([ChatRequest(MSG)]))
    assert isinstance(err, JudgeError) and err.kind == "transport"
    assert str(err).startswith(f"connection error (ConnectError) from {client.base_url};")
    assert_clean(err, ["pa55w0rd-s3cret", "q-secret-0123456789", KEY])
