"""An append-only record of what left the machine: one JSON line per HTTP request a client sent.

A line says when (UTC), from which stage, for which record, to which host and model, with what outcome, and
how many identifiers were masked in it — never any of the text. The request is named by the sha256 of its body
(canonical JSON), so whoever holds the data can show which line a record produced, and the log reveals nothing
of it. Lines are written with one `write` on a descriptor opened O_APPEND: every line lands at the end, whole,
even with several clients or processes on one file, and nothing here ever rewrites, truncates or seeks. The
file is created 0600 (it lists record ids). Cache hits send nothing and write nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

# A record id is an identifier ("p12", "dlg-00042#3"); anything else might be text, and is stored hashed.
_ID = re.compile(r"[A-Za-z0-9_.:#/@+\-]{1,128}")
_LABEL = re.compile(r"[A-Za-z0-9_\-]{1,64}")  # a masked-count category ("mobile", "id_card")


def canonical_body(body: Mapping[str, Any]) -> bytes:
    """A request body as canonical JSON (sorted keys, no spaces, UTF-8 as is): what `request_sha256` hashes."""
    return json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str).encode()


def request_sha256(body: Mapping[str, Any]) -> str:
    """sha256 (hex) of `canonical_body(body)`: recompute it from the data to find a request's audit lines."""
    return hashlib.sha256(canonical_body(body)).hexdigest()


def safe_id(record_id: Any) -> str | None:
    """`record_id` as it may be logged: an identifier as is, anything else as "sha256:<16 hex>"."""
    if record_id is None:
        return None
    text = str(record_id)
    return text if _ID.fullmatch(text) else "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def check_masked(masked: Mapping[str, int] | None) -> dict[str, int] | None:
    """Validate masked counts (category -> count) before a request is sent; raise ValueError on anything else,
    so text can never reach the log through them."""
    if masked is None:
        return None
    bad = [k for k, v in masked.items() if not (isinstance(k, str) and _LABEL.fullmatch(k)) or
           isinstance(v, bool) or not isinstance(v, int) or v < 0]
    if bad:
        raise ValueError(f"masked counts must map category names ([A-Za-z0-9_-]) to counts >= 0; "
                         f"bad entries: {len(bad)}")
    return dict(masked)


class AuditLog:
    """Appends one line per request to `path` (created 0600, parent folders too). stage: the stage id put on
    every line. Each `record` opens, appends and closes, so the object holds no descriptor: it can be shared by
    clients, outlive event loops, and a rotated or removed file is simply started again."""

    def __init__(self, path: str | os.PathLike[str], *, stage: str | None = None) -> None:
        self.path = Path(path)
        self.stage = safe_id(stage)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path)!r}, stage={self.stage!r})"

    def record(self, *, request_sha256: str, url: str, host: str, model: str, attempt: int, outcome: str,
               status: int | None = None, duration_s: float | None = None, request_bytes: int | None = None,
               record_id: Any = None, masked: Mapping[str, int] | None = None,
               sent_at: datetime | None = None) -> None:
        """Append one line. url and host must already be public (reward.urls.public_url)."""
        line = {
            "time": (sent_at or datetime.now(timezone.utc)).isoformat(timespec="milliseconds"),
            "stage": self.stage,
            "record": safe_id(record_id),
            "request_sha256": request_sha256,
            "request_bytes": request_bytes,
            "host": host,
            "url": url,
            "model": model,
            "attempt": attempt,
            "outcome": outcome,
            "status": status,
            "duration_s": round(duration_s, 4) if duration_s is not None else None,
            "masked": check_masked(masked),
        }
        data = (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        # O_NOFOLLOW: a link planted at the log's path must not redirect what is appended.
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(self.path, flags, 0o600)
        try:
            if os.fstat(fd).st_mode & 0o077:  # made by someone else, or under a loose umask: tighten it
                os.fchmod(fd, 0o600)
            os.write(fd, data)  # one write: with O_APPEND the line lands whole at the end of the file
        finally:
            os.close(fd)

    @staticmethod
    def read(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
        """Every line of an audit file, parsed (for reports and tests)."""
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
