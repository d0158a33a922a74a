"""The review web app: Starlette routes over a ReviewStore, served by uvicorn.

Authentication. Each annotator's link is `/?token=...`. The server checks the token, sets it as an HttpOnly,
SameSite=Strict cookie and redirects to `/`, so the token leaves the address bar and history at once. Every
other request needs that cookie (or `Authorization: Bearer <token>`); without a valid one it gets 401. The
annotator is taken from the token only, never from the request, so nobody can read or write another's labels:
a task outside the caller's queue is 404, whoever labels it.

What the page gets is data, never markup: the JSON API returns text, the page inserts it with textContent, and
a Content-Security-Policy allowing only this server's own script and style (no inline script) stops an injected
tag from running even if it were ever parsed. Only the three files of the package's `static/` folder are served,
by a fixed table; no path from a request reaches the filesystem. Request bodies are capped (413), writes must be
JSON (415) from this page's origin (403), and every response is `no-store` (it holds patient text).
"""

from __future__ import annotations

import inspect
import json
import logging
import re
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlsplit

from rlmed.review.store import ReviewStore
from rlmed.review.tasks import view

logger = logging.getLogger(__name__)

COOKIE = "rlmed_review"
MAX_BODY = 64 * 1024  # a label with a long corrected answer is a few KB; nothing legitimate comes near this
MAX_CORRECTED = 20_000  # characters
MAX_NOTE = 4_000
VERDICTS = ("a", "b", "tie", "unsafe")
SCORE_RANGE = range(1, 11)  # the rubric's 1-10 scale (reward.prompts SCORE_MIN..SCORE_MAX)
STATIC = Path(__file__).resolve().parent / "static"
# name in the URL -> (file in static/, content type); the only files the server ever reads for a request
STATIC_FILES = {"review.js": ("review.js", "text/javascript; charset=utf-8"),
                "review.css": ("review.css", "text/css; charset=utf-8")}
PAGE = "page.html"
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    "x-frame-options": "DENY",
}
UNAUTHORISED_PAGE = ("<!doctype html><meta charset=utf-8><title>401</title>"
                     "<p>此链接无效或已失效，请向负责人索取新的链接。</p>"
                     "<p>This link is not valid (or was replaced). Ask for a new one.</p>")


class LabelError(ValueError):
    """A label request the server refuses (422), with the reason for the page."""


def rubric_criteria(path: str | Path | None = None) -> list[dict[str, str]]:
    """The judge's rubric criteria (reward.prompts.load_rubric: HuatuoGPT's, Chinese, by default), each with the
    label its heading gives it (`### informativeness（信息量）` -> 信息量), so doctors score what the judge scores."""
    from reward.prompts import load_rubric

    rubric = load_rubric(path)
    labels = {}
    for match in re.finditer(r"^#+\s*([A-Za-z_][\w]*)\s*[（(]([^）)]+)[）)]", rubric.text, flags=re.M):
        labels[match.group(1)] = match.group(2).strip()
    return [{"name": c, "label": labels.get(c, c)} for c in rubric.criteria]


def parse_label(body: Any, criteria: Sequence[str]) -> dict[str, Any]:
    """A label request's JSON, checked: verdict a|b|tie|unsafe; optional scores {A|B: {criterion: 1..10}};
    optional corrected answer and note (strings; blank ones stored as none)."""
    if not isinstance(body, dict):
        raise LabelError("the label must be a JSON object")
    unknown = sorted(set(body) - {"verdict", "scores", "corrected", "note"})
    if unknown:
        raise LabelError(f"unknown fields {unknown}")
    verdict = body.get("verdict")
    if verdict not in VERDICTS:
        raise LabelError(f"verdict must be one of {list(VERDICTS)}")
    scores = body.get("scores") or None
    if scores is not None:
        if not isinstance(scores, dict) or set(scores) - {"A", "B"}:
            raise LabelError("scores must be {\"A\": {criterion: 1-10}, \"B\": {...}}")
        clean = {}
        for side, values in scores.items():
            if not isinstance(values, dict) or set(values) - set(criteria):
                raise LabelError(f"scores of {side} must map the rubric's criteria {list(criteria)} to 1-10")
            for name, value in values.items():
                if isinstance(value, bool) or not isinstance(value, int) or value not in SCORE_RANGE:
                    raise LabelError(f"score {side}.{name} must be a whole number 1-10, got {value!r}")
            if values:
                clean[side] = dict(values)
        scores = clean or None
    out: dict[str, Any] = {"verdict": verdict, "scores": scores}
    for key, limit in (("corrected", MAX_CORRECTED), ("note", MAX_NOTE)):
        value = body.get(key)
        if value is not None and not isinstance(value, str):
            raise LabelError(f"{key} must be text")
        if value is not None and len(value) > limit:
            raise LabelError(f"{key} is longer than {limit} characters")
        out[key] = value if value is not None and value.strip() else None
    return out


def public_label(label: dict[str, Any] | None) -> dict[str, Any] | None:
    if label is None:
        return None
    return {k: label[k] for k in ("verdict", "scores", "corrected", "note", "revision")}


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every response (pure ASGI, so errors Starlette makes itself get them too)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items() if k.encode() not in names]
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(store: ReviewStore, criteria: Sequence[dict[str, str]] | None = None) -> Any:
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
    from starlette.routing import Route

    if "max_body_size" not in inspect.signature(Starlette.__init__).parameters:
        raise RuntimeError("rlmed review needs Starlette 1.x (its max_body_size); constraints.txt pins the version "
                           "tested: pip install -e '.[test]' -c constraints.txt")
    criteria = list(criteria if criteria is not None else rubric_criteria())
    names = [c["name"] for c in criteria]
    page = (STATIC / PAGE).read_bytes()
    static = {name: ((STATIC / file).read_bytes(), kind) for name, (file, kind) in STATIC_FILES.items()}

    def token_of(request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            return header[7:].strip()
        return request.cookies.get(COOKIE)

    def unauthorised(request: Request) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": "not authorised: open your own review link again"}, status_code=401)
        return HTMLResponse(UNAUTHORISED_PAGE, status_code=401)

    def annotator(request: Request) -> str | None:
        return store.annotator_for(token_of(request))

    async def index(request: Request) -> Response:
        given = request.query_params.get("token")
        if given is not None:
            if store.annotator_for(given) is None:
                return unauthorised(request)
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, given, httponly=True, samesite="strict", path="/")
            return response
        if annotator(request) is None:
            return unauthorised(request)
        return Response(page, media_type="text/html; charset=utf-8")

    async def static_file(request: Request) -> Response:
        if annotator(request) is None:
            return unauthorised(request)
        found = static.get(request.path_params["name"])
        if found is None:
            return Response("not found", status_code=404, media_type="text/plain")
        return Response(found[0], media_type=found[1])

    def progress(who: str) -> dict[str, Any]:
        queue = store.queue(who)
        return {"tasks": [{"id": tid, "done": done} for tid, done in queue],
                "labelled": sum(done for _, done in queue), "total": len(queue)}

    async def me(request: Request) -> Response:
        who = annotator(request)
        if who is None:
            return unauthorised(request)
        return JSONResponse({"annotator": who, "criteria": criteria, **progress(who)})

    async def task(request: Request) -> Response:
        who = annotator(request)
        if who is None:
            return unauthorised(request)
        found = store.task_for(who, request.path_params["tid"])
        if found is None:
            return JSONResponse({"error": "no such task in your queue"}, status_code=404)
        return JSONResponse({**view(found, criteria), "label": public_label(store.label(who, found.id))})

    async def label(request: Request) -> Response:
        who = annotator(request)
        if who is None:
            return unauthorised(request)
        origin = request.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
            return JSONResponse({"error": "cross-origin write refused"}, status_code=403)
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return JSONResponse({"error": "send the label as application/json"}, status_code=415)
        tid = request.path_params["tid"]
        if store.task_for(who, tid) is None:
            return JSONResponse({"error": "no such task in your queue"}, status_code=404)
        try:
            body = json.loads(await request.body())
            checked = parse_label(body, names)
        except (ValueError, UnicodeDecodeError) as exc:
            reason = str(exc) if isinstance(exc, LabelError) else "the body is not valid JSON"
            return JSONResponse({"error": reason}, status_code=422)
        # In a worker thread: the commit waits for an fsync, which must not stall the other annotators' requests.
        saved = await run_in_threadpool(store.save_label, who, tid, checked["verdict"], checked["scores"],
                                        checked["corrected"], checked["note"])
        # Only now, with the label committed and fsync'd, does the page hear that it is saved.
        return JSONResponse({"saved": True, "label": public_label(saved), **progress(who)})

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/static/{name}", static_file, methods=["GET"]),
        Route("/api/me", me, methods=["GET"]),
        Route("/api/tasks/{tid}", task, methods=["GET"]),
        Route("/api/tasks/{tid}/label", label, methods=["PUT"]),
    ]
    return Starlette(routes=routes, middleware=[Middleware(SecurityHeaders)], max_body_size=MAX_BODY)


def serve(store: ReviewStore, host: str, port: int, criteria: Sequence[dict[str, str]] | None = None) -> None:
    """Serve until interrupted. The access log is off: a first visit's URL carries the annotator's token."""
    import uvicorn

    config = uvicorn.Config(create_app(store, criteria), host=host, port=port, log_level="warning",
                            access_log=False, server_header=False, date_header=False)
    uvicorn.Server(config).run()
