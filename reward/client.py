"""An OpenAI-compatible chat client for judge jobs of hundreds of thousands of requests.

Over `openai.AsyncOpenAI` (with max_retries=0: every retry decision is made here) it adds bounded concurrency,
requests/tokens-per-minute buckets, backoff with full jitter honouring Retry-After, re-asks of unparseable
replies, a persistent cache and counters. It never invents a value: a request without a usable reply raises
`JudgeError` (`chat`) or returns one (`chat_many`), and the caller makes that a `Score.failed`.

Secrets: the API key comes from an environment variable and goes only into the Authorization header. Errors
travel far (Score.error -> scored.jsonl, W&B tables, logs), so their text is redacted before it is cut (the key,
any piece of it, Bearer/Authorization values, the URL's user-info and query) and they hold no request, response
or original exception. Everything shown uses `public_url(base_url)`. The HTTP libraries' loggers, which print
every URL with its credentials at INFO, are set to WARNING on import unless someone chose a level for them.

Policy: the endpoint is checked against the host policy (reward.hosts) on construction, and every request sent
can be recorded in an append-only audit log (reward.audit) without its text.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Generic, Sequence, TypeVar
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import openai
from tqdm.auto import tqdm

try:  # the HTTP library this openai release is built on (httpx2), else the classic httpx
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]

from .audit import AuditLog, canonical_body, check_masked
from .cache import ChatCache
from .hosts import check_endpoint
from .ratelimit import TokenBucket, backoff_delay, estimate_tokens, retry_after_s
from .urls import host_of, public_url, url_secrets

log = logging.getLogger(__name__)
T = TypeVar("T")
_RETRYABLE_4XX = {408, 409, 429}


class JudgeError(Exception):
    """A request that got no usable reply. kind: "transport" (retries spent), "http" (a 4xx that is not
    retried) or "parse" (re-asks spent); status: the last HTTP status, if any; attempts: requests sent."""

    def __init__(self, message: str, *, kind: str, status: int | None = None, attempts: int = 0) -> None:
        super().__init__(message)
        self.kind, self.status, self.attempts = kind, status, attempts

    def __reduce__(self) -> tuple[Any, ...]:  # keyword-only fields: the default pickling would lose them
        return (_rebuild_judge_error, (str(self), self.kind, self.status, self.attempts))


def _rebuild_judge_error(message: str, kind: str, status: int | None, attempts: int) -> JudgeError:
    return JudgeError(message, kind=kind, status=status, attempts=attempts)


# Credentials in free text: a Bearer/Basic token, and the value of an Authorization or API-key header or field,
# in the forms servers echo them (`Authorization: Bearer x`, `"authorization": "Bearer x"`, `api-key=x`).
_AUTH_VALUE = re.compile(r"""(?i)\b((?:proxy-)?authorization|x-api-key|api[-_]?key)(["']?\s*[:=]\s*["']?)"""
                         r"""((?:bearer|basic|token)\s+)?[^\s"',;&}]+""")
_TOKEN = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{4,}")
_PIECE = 8  # a run of this many characters of a secret counts as a leak (keys are 40+ characters)


def redact(text: str, secrets: Sequence[str]) -> str:
    """`text` without `secrets`, nor any piece of one of at least 8 characters (a server may echo part of a
    key), nor Bearer tokens and Authorization/API-key values. Redact the whole text before cutting it: cutting
    first can leave most of a key that a plain replace no longer finds."""
    spans: list[tuple[int, int]] = []
    for secret in secrets:
        if len(secret) < 4:  # too short to search for without mangling ordinary words
            continue
        pieces = {secret} if len(secret) < _PIECE else {secret[i:i + _PIECE] for i in range(len(secret) - 7)}
        for piece in pieces:
            start = text.find(piece)
            while start != -1:
                spans.append((start, start + len(piece)))
                start = text.find(piece, start + 1)
    if spans:  # merge the overlapping pieces into whole runs, each shown as one ***
        spans.sort()
        out, last = [], 0
        for start, end in spans:
            if start > last:
                out.append(text[last:start])
                out.append("***")
            elif not out or out[-1] != "***":
                out.append("***")
            last = max(last, end)
        text = "".join(out) + text[last:]
    text = _AUTH_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    return _TOKEN.sub(lambda m: f"{m.group(1)} ***", text)


class _PublicUrls(logging.Filter):
    """Shows the URLs in the HTTP libraries' log records as public_url, for whoever turns those loggers back on."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(public_url(str(a)) if type(a).__name__ == "URL" else a for a in record.args)
        return True


# httpx2 (what this openai is built on) and httpx log every request URL, user-info and query included, at INFO;
# some openai releases log request options (bodies: patient text) at DEBUG. Applied on import so library users
# are covered too; a level someone set (OPENAI_LOG, their own config) is theirs to keep. The filter sits on the
# loggers that create the URL records (a parent's filters never see a child's records).
for _name in ("httpx2", "httpx", "openai"):
    _logger = logging.getLogger(_name)
    if _logger.level == logging.NOTSET:
        _logger.setLevel(logging.WARNING)
    if _name != "openai" and not any(isinstance(f, _PublicUrls) for f in _logger.filters):
        _logger.addFilter(_PublicUrls())


@dataclass
class ChatResult(Generic[T]):
    """text: the reply; parsed: parse(text) or None when no parser was given; usage: tokens billed for this
    call over all its attempts (for a cache hit: the cached reply's usage); attempts: HTTP requests sent;
    finish_reason: the server's word for why the reply ended ("stop", "length", ...; None when it gave none;
    "stop" for a cache hit, as only replies that ended so are cached)."""

    text: str
    parsed: T | None
    usage: dict[str, int]
    cached: bool
    attempts: int
    finish_reason: str | None = None


@dataclass
class ChatRequest(Generic[T]):
    """One `chat` call's arguments, for `chat_many`."""

    messages: list[dict[str, Any]]
    parse: Callable[[str], T] | None = None
    cache_namespace: str = ""
    sampling: dict[str, Any] = field(default_factory=dict)
    record_id: str | None = None  # for the audit log: which record this request is about
    masked: dict[str, int] | None = None  # for the audit log: identifiers masked in it, by category


@dataclass
class ChatStats:
    """Counters over the client's life; retries counts every re-send after a transport failure."""

    requests_sent: int = 0
    cache_hits: int = 0
    retries: int = 0
    rate_limited: int = 0
    server_errors: int = 0
    timeouts: int = 0
    connection_errors: int = 0
    parse_failures: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated_cost: float = 0.0
    request_seconds: float = 0.0  # summed over requests, send to reply: mean latency = this / requests_sent

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _LoopState:
    """Asyncio objects are bound to one event loop; a client reused across `asyncio.run` calls rebuilds them."""

    def __init__(self, client: "ChatClient", url: str, api_key: str) -> None:
        self.loop = asyncio.get_running_loop()
        self.sem = asyncio.Semaphore(client.max_concurrency)
        self.rpm = TokenBucket.per_minute(client.requests_per_minute) if client.requests_per_minute else None
        self.tpm = TokenBucket.per_minute(client.tokens_per_minute) if client.tokens_per_minute else None
        n = client.max_concurrency  # the default pool keeps only 100 idle connections: more slots would churn
        http = openai.DefaultAsyncHttpxClient(limits=httpx.Limits(max_connections=n, max_keepalive_connections=n))
        # A query in base_url (`?api-key=...`, `?api-version=...`) goes in default_query: left in the base URL,
        # the request path would be appended to the query and every request would miss the endpoint.
        parts = urlsplit(url)
        self.api = openai.AsyncOpenAI(base_url=urlunsplit(parts._replace(query="", fragment="")), api_key=api_key,
                                      default_query=dict(parse_qsl(parts.query)) or None, max_retries=0,
                                      timeout=client.timeout_s, http_client=http)


class ChatClient:
    """Chat completions with concurrency and rate limits, retries, parse re-asks, caching and accounting.

    Host policy (reward.hosts.check_endpoint, checked here, before anything is sent): allowed_hosts, the hosts
    data may go to besides this machine (None: the base_url's own host when named_in_recipe); named_in_recipe:
    False when base_url came from the environment rather than the caller's configuration; config_name: where
    the endpoint is configured, for error messages ("judge" -> judge.base_url, judge.allowed_hosts).
    audit: an AuditLog, or a path for one, that gets a line per HTTP request sent (see reward.audit).
    `base_url` is the public form (no user-info, no query): the one thing to show, log or record.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        max_concurrency: int = 32,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        max_retries: int = 6,
        parse_retries: int = 2,
        timeout_s: float = 60.0,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        price_per_million_input: float = 0.0,
        price_per_million_output: float = 0.0,
        cache: ChatCache | None = None,
        progress: bool = True,
        allowed_hosts: Sequence[str] | None = None,
        named_in_recipe: bool = True,
        config_name: str = "judge",
        audit: AuditLog | str | os.PathLike[str] | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.base_url = check_endpoint(base_url, allowed_hosts, named_in_recipe=named_in_recipe,
                                       config_name=config_name)
        self.host = host_of(base_url)
        self.model, self.api_key_env = model, api_key_env
        self.audit = audit if isinstance(audit, AuditLog) or audit is None else AuditLog(audit)
        self.max_concurrency, self.requests_per_minute, self.tokens_per_minute = (
            max_concurrency, requests_per_minute, tokens_per_minute)
        self.max_retries, self.parse_retries, self.timeout_s = max_retries, parse_retries, timeout_s
        self.backoff_base_s, self.backoff_max_s = backoff_base_s, backoff_max_s
        self.price_in, self.price_out = price_per_million_input, price_per_million_output
        self.cache, self.progress = cache, progress
        self.stats = ChatStats()
        key = os.environ.get(api_key_env) if api_key_env else None
        if not key:
            log.debug("no API key in %s; sending 'EMPTY' (fine for a local server)", api_key_env)
        elif not key.isascii():  # it would fail later inside the HTTP library, in an error that holds the key
            raise ValueError(f"the API key in ${api_key_env} has non-ASCII characters; check the variable")
        # Name-mangled and never formatted anywhere but the HTTP client and _redact; the raw URL likewise.
        self.__key, self.__url = key or "EMPTY", base_url
        self.__secrets = ([key] if key else []) + url_secrets(base_url)
        self._state: _LoopState | None = None

    def __repr__(self) -> str:
        return f"ChatClient(base_url={self.base_url!r}, model={self.model!r}, max_concurrency={self.max_concurrency})"

    def _loop_state(self) -> _LoopState:
        if self._state is None or self._state.loop is not asyncio.get_running_loop():
            self._state = _LoopState(self, self.__url, self.__key)
        return self._state

    def _redact(self, text: str, limit: int | None = None) -> str:
        """`text` without the key, the URL's secrets or any credential-looking value, then cut to `limit`
        characters (in that order: see `redact`)."""
        text = redact(text.replace(self.__url, self.base_url), self.__secrets)
        return text if limit is None or len(text) <= limit else text[:limit] + "..."

    def cache_key(self, messages: list[dict[str, Any]], cache_namespace: str = "", **sampling: Any) -> str:
        """sha256 over (model, namespace, messages, sampling params in sorted order)."""
        blob = json.dumps([self.model, cache_namespace, messages, sampling], ensure_ascii=False,
                          sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    async def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        parse: Callable[[str], T] | None = None,
        cache_namespace: str = "",
        record_id: str | None = None,
        masked: dict[str, int] | None = None,
        **sampling: Any,
    ) -> ChatResult[T]:
        """One reply, parsed by `parse` (which raises ValueError on a bad reply), from the cache when possible.
        An unparseable reply is re-asked up to `parse_retries` more times, then JudgeError(kind="parse"); with a
        parser, so is a reply the server says it cut off (finish_reason "length", "content_filter", ...): text
        that parses may still be a verdict missing its end. Only a reply that parsed and ended with "stop" is
        cached, so neither garbage nor a cut-off reply is ever served again.
        record_id, masked: what the audit log says this request was about (no effect without an audit log)."""
        masked = check_masked(masked)  # before anything is sent: a bad value must not cost a request
        key = self.cache_key(messages, cache_namespace, **sampling)
        hit = self.cache.get(key) if self.cache is not None else None
        if hit is not None:
            try:
                parsed = parse(hit["text"]) if parse else None
            except ValueError:  # the parser changed since the entry was written: ask again
                log.warning("cached reply %s no longer parses; asking again", key[:12])
            else:
                self.stats.cache_hits += 1
                return ChatResult(hit["text"], parsed, dict(hit["usage"]), cached=True, attempts=0,
                                  finish_reason="stop")
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        attempts, reason = 0, ""
        for ask in range(self.parse_retries + 1):
            text, reply_usage, finish, sent = await self._send(messages, sampling, attempts, (record_id, masked))
            attempts += sent
            for name in usage:
                usage[name] += reply_usage.get(name, 0)
            try:
                parsed = parse(text) if parse else None
                if parse is not None and finish not in (None, "stop"):
                    raise ValueError(f"reply not finished (finish_reason={finish!r})")
            except ValueError as exc:
                self.stats.parse_failures += 1
                # A reply may echo what it was sent (a proxy's error page with the headers): redact, then cut.
                reason = f"{self._redact(str(exc), 200)}; reply began {self._redact(text, 120)!r}"
                log.debug("reply did not parse (ask %d of %d): %s", ask + 1, self.parse_retries + 1, reason)
                continue
            if self.cache is not None and finish == "stop":
                self.cache.put(key, text, reply_usage)
            return ChatResult(text, parsed, usage, cached=False, attempts=attempts, finish_reason=finish)
        self.stats.failures += 1
        raise JudgeError(self._redact(f"reply from {self.model} did not parse after {self.parse_retries + 1} "
                                      f"asks: {reason}"), kind="parse", attempts=attempts)

    async def _send(self, messages: list[dict[str, Any]], sampling: dict[str, Any], before: int,
                    about: tuple[str | None, dict[str, int] | None] = (None, None)
                    ) -> tuple[str, dict[str, int], str | None, int]:
        """One reply text, retrying transport failures; returns (text, usage, finish_reason, requests sent).
        about: (record id, masked counts) for the audit log."""
        state = self._loop_state()
        estimate = estimate_tokens(messages, sampling.get("max_tokens") or sampling.get("max_completion_tokens"))
        body = {"model": self.model, "messages": messages, **sampling}
        blob = canonical_body(body) if self.audit is not None else b""
        digest, size = hashlib.sha256(blob).hexdigest(), len(blob)
        for attempt in range(self.max_retries + 1):
            retry_after: float | None = None
            fatal: JudgeError | None = None
            async with state.sem:  # hold a slot only while sending, never while backing off
                if state.rpm:
                    await state.rpm.acquire(1)
                if state.tpm:
                    await state.tpm.acquire(estimate)
                self.stats.requests_sent += 1
                sent_at, sent_wall = time.perf_counter(), datetime.now(timezone.utc)
                outcome, status = "interrupted", None  # what the audit says if the task is cancelled mid-request
                try:
                    # The client's generic `post`, not `chat.completions.create`: skipping the typed request
                    # transform and pydantic reply model saves client CPU per request (docs/benchmarks.md).
                    reply = await state.api.post("/chat/completions", cast_to=dict, body=body)
                    outcome, status = "ok", 200
                    text, usage, finish = _reply_parts(reply)
                except openai.APIStatusError as exc:
                    status = exc.status_code
                    outcome = what = f"HTTP {status}"
                    if status < 500 and status not in _RETRYABLE_4XX:
                        self.stats.failures += 1
                        # Built here, raised below, outside this handler: raised inside it, the error would
                        # keep `exc` as its __context__, and with it the request and its Authorization header.
                        fatal = JudgeError(f"HTTP {status} from {self.base_url} (not retried): "
                                           f"{self._redact(_status_text(exc), 300)}", kind="http", status=status,
                                           attempts=before + attempt + 1)
                    else:
                        self.stats.rate_limited += status == 429
                        self.stats.server_errors += status >= 500
                        self.stats.timeouts += status == 408
                        retry_after = retry_after_s(exc.response.headers)
                except openai.APITimeoutError:  # subclass of APIConnectionError: test first
                    self.stats.timeouts += 1
                    outcome, what, status = "timeout", f"timeout after {self.timeout_s:g} s", None
                except openai.APIConnectionError as exc:
                    self.stats.connection_errors += 1
                    outcome, status = "connection error", None
                    what = f"connection error ({type(exc.__cause__ or exc).__name__})"
                except (openai.APIResponseValidationError, _MalformedReply):
                    self.stats.server_errors += 1
                    outcome, what, status = "malformed reply", "malformed response body", None
                else:
                    self._bill(usage, estimate, state)
                    return text, usage, finish, attempt + 1
                finally:
                    elapsed = time.perf_counter() - sent_at
                    self.stats.request_seconds += elapsed
                    if self.audit is not None:  # every attempt, failed ones too: each may have left the machine
                        self.audit.record(request_sha256=digest, url=self.base_url, host=self.host,
                                          model=self.model, attempt=before + attempt + 1, outcome=outcome,
                                          status=status, duration_s=elapsed, record_id=about[0], masked=about[1],
                                          request_bytes=size, sent_at=sent_wall)
            if fatal is not None:
                raise fatal
            if attempt == self.max_retries:
                break
            self.stats.retries += 1
            delay = backoff_delay(attempt, self.backoff_base_s, self.backoff_max_s, retry_after)
            log.debug("%s from %s; retry %d of %d in %.2f s", what, self.base_url, attempt + 1,
                      self.max_retries, delay)
            await asyncio.sleep(delay)
        self.stats.failures += 1
        raise JudgeError(f"{what} from {self.base_url}; gave up after {self.max_retries + 1} attempts",
                         kind="transport", status=status, attempts=before + self.max_retries + 1)

    def _bill(self, usage: dict[str, int], estimate: float, state: _LoopState) -> None:
        """Count a reply's tokens and cost, and correct the tokens-per-minute bucket's estimate."""
        self.stats.prompt_tokens += usage["prompt_tokens"]
        self.stats.completion_tokens += usage["completion_tokens"]
        self.stats.estimated_cost += (usage["prompt_tokens"] * self.price_in
                                      + usage["completion_tokens"] * self.price_out) / 1e6
        if state.tpm and any(usage.values()):
            state.tpm.adjust(sum(usage.values()) - estimate)

    async def chat_many(self, requests: Sequence[ChatRequest[Any]], *, desc: str = "chat"
                        ) -> list[ChatResult[Any] | JudgeError]:
        """Run all requests concurrently (the semaphore bounds what is in flight); results in order, failures
        as the JudgeError object. Tasks are started in a sliding window 4x max_concurrency wide, refilled as
        each finishes (no batch boundaries where slots idle), so 400k requests are not 400k live coroutines."""
        results: list[ChatResult[Any] | JudgeError | None] = [None] * len(requests)
        window = asyncio.Semaphore(max(4 * self.max_concurrency, 256))
        pending: set[asyncio.Task[None]] = set()
        bar = tqdm(total=len(requests), desc=desc, unit="req", disable=not self.progress, smoothing=0.05)

        async def run(i: int, req: ChatRequest[Any]) -> None:
            try:
                results[i] = await self.chat(req.messages, parse=req.parse, cache_namespace=req.cache_namespace,
                                             record_id=req.record_id, masked=req.masked, **req.sampling)
            except JudgeError as exc:
                # Kept without its traceback: the frames would pin this request's messages (patient text)
                # and the client for as long as the result lives, which for 400k results is memory too.
                results[i] = exc.with_traceback(None)

        def done(task: asyncio.Task[None]) -> None:
            pending.discard(task)
            window.release()
            bar.update(1)

        try:
            for i, req in enumerate(requests):
                await window.acquire()
                task = asyncio.create_task(run(i, req))
                pending.add(task)
                task.add_done_callback(done)
            while pending:
                await asyncio.gather(*pending)  # re-raises a bug (not a JudgeError) from any request
        except BaseException:
            for task in list(pending):
                task.cancel()
            raise
        finally:
            bar.close()
        return results  # type: ignore[return-value]  # every slot is filled once all tasks finished

    async def aclose(self) -> None:
        """Close the HTTP connections (the cache belongs to its owner, who closes it)."""
        if self._state is not None and self._state.loop is asyncio.get_running_loop():
            await self._state.api.close()
        self._state = None

    async def __aenter__(self) -> "ChatClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _status_text(exc: openai.APIStatusError) -> str:
    """str(exc) ("Error code: 400 - <the body's error message>"), with the body's `detail` when that is text the
    openai package left out: FastAPI servers (transformers serve, ...) explain a 4xx there only, e.g. "The prompt
    has 2121 tokens, but the model takes at most 2048". A `detail` that is not text is left out: a validation
    error's list quotes the request it rejects."""
    text, body = str(exc), exc.body
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str) and detail.strip() and detail.strip() not in text:
        text = f"{text} - {detail.strip()}"
    return text


class _MalformedReply(Exception):
    """A 200 whose body is not a chat completion (a broken proxy or server); retried like a 5xx."""


def _reply_parts(reply: Any) -> tuple[str, dict[str, int], str | None]:
    """The first choice's text (None content, e.g. a refusal, becomes ""), the reported token usage, and the
    first choice's finish_reason (None when the server gave none)."""
    try:
        choice = reply["choices"][0]
        text = choice["message"].get("content") or ""
        finish = choice.get("finish_reason")
        usage = reply.get("usage") or {}
        return (text, {name: int(usage.get(name) or 0) for name in ("prompt_tokens", "completion_tokens")},
                finish if isinstance(finish, str) else None)
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
        raise _MalformedReply(type(exc).__name__) from None
