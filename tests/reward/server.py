"""A scriptable OpenAI-compatible chat server on 127.0.0.1, for testing and benchmarking the judge client.

Real HTTP (stdlib ThreadingHTTPServer, HTTP/1.1 keep-alive), so the real `openai.AsyncOpenAI` client talks to it.

    with JudgeServer() as server:
        server.script(fail=[429, 500, "timeout", "garbage"], then=lambda body: '{"score": 3}')
        client = ChatClient(server.base_url, "judge", ...)

Every request first takes the next entry of the `fail` queue, if any; otherwise random faults (p429, p500,
p_garbage) are drawn; otherwise `then(body)` answers - and it may return a `Fault` too, for per-request rules,
or a `Reply` to set the finish_reason (a plain string is a reply that finished: "stop").

A judge must copy the request's fence tag into its verdict's "request" field (reward.prompts). Canned verdicts
do not know the tag, so with `copy_tag` on (the default) the server plays a compliant judge: a reply that is a
JSON object without "request", to a request whose prompt has a fence tag, gets `"request": <tag>` put first.
Turn it off to send a reply exactly as written (the injection tests do).
A fault is an HTTP status (int), "timeout" (hang until the client gives up), "garbage" (a 200 whose text is not
what was asked for), "drop" (close the connection without a reply), or a `Fault` for details (Retry-After).
`latency` (seconds, or a callable drawing them) delays every reply. Waits end early when the server stops, so
a hung handler never outlives its test.

Run `python -m tests.reward.server --median 0.5 --p429 0.02` for a standalone server (the bench does); it
prints `PORT <n>` and serves until killed. GET /stats returns counters as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable

GARBAGE = "抱歉，我无法理解这个请求。<<not the requested format>>"
FENCE_TAG = re.compile(r"<(data-[0-9a-f]{16}) kind=\"dialogue\">")


@dataclass
class Reply:
    """A reply with an explicit finish_reason ("stop", "length", ...; None leaves the field out)."""

    text: str
    finish_reason: str | None = "stop"


@dataclass
class Fault:
    """kind: "status" (with `status`), "timeout", "garbage" or "drop"; retry_after: the Retry-After header value
    for a status fault (a number of seconds or an HTTP date), or None for none."""

    kind: str
    status: int = 0
    retry_after: float | str | None = None
    hang_s: float = 30.0


def as_fault(item: int | str | Fault) -> Fault:
    if isinstance(item, Fault):
        return item
    if isinstance(item, int):
        return Fault("status", item)
    if item in ("timeout", "garbage", "drop"):
        return Fault(item)
    raise ValueError(f"unknown fault {item!r}")


def request_tag(body: dict[str, Any]) -> str | None:
    """The fence tag of a judge request (reward.prompts), or None for a request that has none."""
    for message in body.get("messages", []):
        found = FENCE_TAG.search(str(message.get("content", "")))
        if found:
            return found.group(1)
    return None


def with_tag(body: dict[str, Any], text: str) -> str:
    """`text` with the request's tag copied in, as a compliant judge does; unchanged when it is not a JSON
    object, already has "request", or the request has no tag."""
    tag = request_tag(body)
    try:
        obj = json.loads(text)
    except ValueError:
        return text
    if tag is None or not isinstance(obj, dict) or "request" in obj:
        return text
    return json.dumps({"request": tag, **obj}, ensure_ascii=False)


def echo(body: dict[str, Any]) -> str:
    """Default responder: names the last user message, so replies differ per request."""
    return f"reply to: {body['messages'][-1]['content']}"


def lognormal(median: float, sigma: float, seed: int = 0) -> Callable[[], float]:
    """Latency drawn from a log-normal with the given median (seconds) and log-space sigma."""
    rng, lock = random.Random(seed), threading.Lock()

    def draw() -> float:
        with lock:
            return rng.lognormvariate(math.log(median), sigma)

    return draw


def free_port() -> int:
    """A port nothing listens on (for connection-refused tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a hung handler must not keep the test process alive
    block_on_close = False
    request_queue_size = 1024  # 128 clients connecting at once overflow the default backlog of 5


class JudgeServer:
    """The server plus what it saw: `received` (request bodies), `headers`, `times` (arrival, monotonic),
    `usages` (the usage it reported per 200 reply), `count`, `max_in_flight`, `latencies` (injected delays)."""

    def __init__(self, model: str = "judge-test") -> None:
        self.model = model
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.script()
        self.reset()
        self._httpd = _HTTPServer(("127.0.0.1", 0), _make_handler(self))
        self.port = self._httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def script(
        self,
        *,
        fail: Iterable[int | str | Fault] = (),
        then: Callable[[dict[str, Any]], str | Reply | Fault] = echo,
        latency: float | Callable[[], float] = 0.0,
        p429: float = 0.0,
        p500: float = 0.0,
        p_garbage: float = 0.0,
        retry_after: float | str | None = None,
        hang_s: float = 30.0,
        seed: int = 0,
        copy_tag: bool = True,
    ) -> "JudgeServer":
        """Set how the next requests are answered (see the module docstring); returns self."""
        with self._lock:
            self._fail = [as_fault(f) for f in fail]
            self._then, self._latency = then, latency
            self._p = (p429, p500, p_garbage)
            self._retry_after, self._hang_s = retry_after, hang_s
            self._rng = random.Random(seed)
            self._copy_tag = copy_tag
        return self

    def reset(self) -> None:
        """Forget what was received (the script stays)."""
        with self._lock:
            self.received: list[dict[str, Any]] = []
            self.paths: list[str] = []  # request paths with their query, as the server saw them
            self.headers: list[dict[str, str]] = []
            self.times: list[float] = []
            self.usages: list[dict[str, int]] = []
            self.latencies: list[float] = []
            self.in_flight = self.max_in_flight = 0

    @property
    def count(self) -> int:
        return len(self.received)

    def _next_action(self, body: dict[str, Any]) -> tuple[Fault | Reply, float]:
        with self._lock:
            if self._fail:
                action: Fault | str | None = self._fail.pop(0)
            else:
                r, (p429, p500, pg) = self._rng.random(), self._p
                action = (Fault("status", 429, self._retry_after) if r < p429 else Fault("status", 500)
                          if r < p429 + p500 else Fault("garbage") if r < p429 + p500 + pg else None)
            delay = self._latency() if callable(self._latency) else float(self._latency)
            self.latencies.append(delay)
            responder, copy_tag = self._then, self._copy_tag
        if action is None:
            action = responder(body)
        if isinstance(action, str):
            action = Reply(action)
        if isinstance(action, Reply) and copy_tag:
            action = Reply(with_tag(body, action.text), action.finish_reason)
        if isinstance(action, Fault) and action.kind == "status" and action.status == 429 and \
                action.retry_after is None:
            action.retry_after = self._retry_after
        return action, delay

    def wait(self, seconds: float) -> bool:
        """Sleep, but wake when the server stops; True if it stopped."""
        return self._stop.wait(seconds)

    def start(self) -> "JudgeServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "JudgeServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _make_handler(server: JudgeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real providers
        disable_nagle_algorithm = True  # headers and body go out in two writes: Nagle + delayed ACK = +40 ms

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _send(self, status: int, payload: Any, extra: dict[str, str] | None = None) -> None:
            data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.rstrip("/").endswith("/models"):
                self._send(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})
            elif self.path.rstrip("/").endswith("/stats"):
                with server._lock:
                    lat = server.latencies
                    self._send(200, {"count": server.count, "max_in_flight": server.max_in_flight,
                                     "latency_sum": sum(lat), "latency_n": len(lat), "times": server.times})
            else:
                self._send(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            # A gateway's key may ride in the query (`?api-key=...`): the route is the path before it.
            if not self.path.split("?", 1)[0].rstrip("/").endswith("/chat/completions"):
                return self._send(404, {"error": {"message": "not found"}})
            with server._lock:
                server.received.append(body)
                server.paths.append(self.path)
                server.headers.append(dict(self.headers.items()))
                server.times.append(time.monotonic())
                server.in_flight += 1
                server.max_in_flight = max(server.max_in_flight, server.in_flight)
            try:
                self._answer(body)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout): fine
                self.close_connection = True
            finally:
                with server._lock:
                    server.in_flight -= 1

        def _answer(self, body: dict[str, Any]) -> None:
            action, delay = server._next_action(body)
            if server.wait(delay):
                return
            if isinstance(action, Fault):
                if action.kind == "timeout":
                    server.wait(action.hang_s)
                    self.close_connection = True
                    return
                if action.kind == "drop":
                    self.close_connection = True
                    return
                if action.kind == "status":
                    extra = {"Retry-After": str(action.retry_after)} if action.retry_after is not None else {}
                    return self._send(action.status, {"error": {"message": f"injected {action.status}",
                                                                "type": "injected", "code": action.status}}, extra)
                action = Reply(GARBAGE)
            text = action.text
            prompt = sum(len(str(m.get("content", ""))) for m in body.get("messages", []))
            usage = {"prompt_tokens": prompt, "completion_tokens": len(text), "total_tokens": prompt + len(text)}
            with server._lock:
                server.usages.append(usage)
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}}
            if action.finish_reason is not None:
                choice["finish_reason"] = action.finish_reason
            self._send(200, {
                "id": f"chatcmpl-{server.count}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", server.model), "choices": [choice], "usage": usage,
            })

    return Handler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--median", type=float, default=0.0, help="log-normal latency median, seconds (0: none)")
    ap.add_argument("--sigma", type=float, default=0.5)
    ap.add_argument("--p429", type=float, default=0.0)
    ap.add_argument("--retry-after", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    server = JudgeServer()
    server.script(latency=lognormal(args.median, args.sigma, args.seed) if args.median > 0 else 0.0,
                  p429=args.p429, retry_after=args.retry_after, seed=args.seed)
    with server:
        print(f"PORT {server.port}", flush=True)
        while not server.wait(3600):
            pass


if __name__ == "__main__":
    main()
