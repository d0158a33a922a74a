"""The review's durable state: annotators (token hashes), tasks with their sides, queues, and labels.

One SQLite file, `<run_dir>/review/review.sqlite` (folder 0700, file 0600: labels sit beside patient text).
WAL mode with synchronous=FULL: a commit returns only after its WAL frames are fsync'd, and the server answers
a label request only after the commit, so a label the page shows as saved survives a killed server or a power
cut. One connection behind a lock: labelling is a few writes a minute per doctor, and one writer keeps SQLite's
locking out of the picture.

Tokens are never stored, only their sha256: the database leaks no working link. A label is one row per
(annotator, task), replaced in place when the annotator changes it; `revision` counts the saves.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from rlmed.artifacts import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE
from rlmed.review.tasks import Task

REVIEW_DIR = "review"
DB_NAME = "review.sqlite"
SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS annotators (name TEXT PRIMARY KEY, token_sha256 TEXT NOT NULL, issued REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (id TEXT PRIMARY KEY, position INTEGER NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS queue (annotator TEXT NOT NULL, task_id TEXT NOT NULL, position INTEGER NOT NULL,
    PRIMARY KEY (annotator, task_id));
CREATE TABLE IF NOT EXISTS labels (annotator TEXT NOT NULL, task_id TEXT NOT NULL, verdict TEXT NOT NULL,
    scores TEXT, corrected TEXT, note TEXT, created REAL NOT NULL, updated REAL NOT NULL,
    revision INTEGER NOT NULL, PRIMARY KEY (annotator, task_id));
"""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(24)  # 192 bits


def db_path(run_dir: Path) -> Path:
    return Path(run_dir) / REVIEW_DIR / DB_NAME


class ReviewStore:
    """The review database. Thread-safe: every method takes the lock; writes commit before they return."""

    def __init__(self, path: Path):
        self.path = Path(path)
        folder = self.path.parent
        if not folder.exists():
            folder.mkdir(mode=PRIVATE_DIR_MODE, parents=True)
        if not self.path.exists():  # created 0600 before SQLite writes a byte into it
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, PRIVATE_FILE_MODE))
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        with self._write() as conn:
            for statement in SCHEMA.split(";"):  # not executescript: it would COMMIT the open transaction
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))

    def _write(self) -> "_Transaction":
        return _Transaction(self._lock, self._conn)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # --- setting up -------------------------------------------------------------------------------------------
    def initialised(self) -> bool:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0] > 0

    def setup(self, tasks: Sequence[Task], queues: dict[str, list[str]], settings: dict[str, Any]) -> dict[str, str]:
        """First start: tasks, queues and annotators in one transaction; returns each annotator's new token."""
        tokens = {name: new_token() for name in queues}
        now = time.time()
        with self._write() as conn:
            conn.executemany("INSERT INTO tasks VALUES (?, ?, ?)",
                             [(t.id, i, json.dumps(t.to_json(), ensure_ascii=False)) for i, t in enumerate(tasks)])
            conn.executemany("INSERT INTO queue VALUES (?, ?, ?)",
                             [(name, tid, i) for name, ids in queues.items() for i, tid in enumerate(ids)])
            conn.executemany("INSERT INTO annotators VALUES (?, ?, ?)",
                             [(name, token_hash(token), now) for name, token in tokens.items()])
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('settings', ?)", (json.dumps(settings),))
        return tokens

    def settings(self) -> dict[str, Any]:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'settings'").fetchone()
        return json.loads(row[0]) if row else {}

    def reissue(self, names: Sequence[str]) -> dict[str, str]:
        """New tokens for these annotators; their old links stop working at once."""
        tokens = {name: new_token() for name in names}
        with self._write() as conn:
            for name, token in tokens.items():
                conn.execute("UPDATE annotators SET token_sha256 = ?, issued = ? WHERE name = ?",
                             (token_hash(token), time.time(), name))
        return tokens

    def annotators(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT name FROM annotators ORDER BY name")]

    def annotator_for(self, token: str | None) -> str | None:
        """The annotator whose token this is, or None. Compared in constant time against every stored hash."""
        if not token or len(token) > 256:
            return None
        digest = token_hash(token)
        with self._lock:
            rows = self._conn.execute("SELECT name, token_sha256 FROM annotators").fetchall()
        found = None
        for name, stored in rows:
            if hmac.compare_digest(stored, digest):
                found = name
        return found

    # --- reading ----------------------------------------------------------------------------------------------
    def tasks(self) -> list[Task]:
        with self._lock:
            rows = self._conn.execute("SELECT body FROM tasks ORDER BY position").fetchall()
        return [Task.from_json(json.loads(r[0])) for r in rows]

    def task_for(self, annotator: str, tid: str) -> Task | None:
        """The task, only when it is in this annotator's queue."""
        with self._lock:
            row = self._conn.execute(
                "SELECT t.body FROM tasks t JOIN queue q ON q.task_id = t.id WHERE q.annotator = ? AND t.id = ?",
                (annotator, tid)).fetchone()
        return Task.from_json(json.loads(row[0])) if row else None

    def queue(self, annotator: str) -> list[tuple[str, bool]]:
        """(task id, labelled) in the annotator's order."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT q.task_id, l.task_id IS NOT NULL FROM queue q LEFT JOIN labels l "
                "ON l.annotator = q.annotator AND l.task_id = q.task_id WHERE q.annotator = ? ORDER BY q.position",
                (annotator,)).fetchall()
        return [(tid, bool(done)) for tid, done in rows]

    def queues(self) -> dict[str, list[str]]:
        with self._lock:
            rows = self._conn.execute("SELECT annotator, task_id FROM queue ORDER BY annotator, position").fetchall()
        out: dict[str, list[str]] = {}
        for name, tid in rows:
            out.setdefault(name, []).append(tid)
        return out

    def label(self, annotator: str, tid: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM labels WHERE annotator = ? AND task_id = ?",
                                     (annotator, tid)).fetchone()
        return _label_row(row) if row else None

    def labels(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute("SELECT * FROM labels ORDER BY task_id, annotator").fetchall()
        return [_label_row(r) for r in rows]

    # --- writing ----------------------------------------------------------------------------------------------
    def save_label(self, annotator: str, tid: str, verdict: str, scores: dict[str, Any] | None,
                   corrected: str | None, note: str | None) -> dict[str, Any]:
        """Insert or replace this annotator's label of the task; committed (fsync'd) when this returns."""
        now = time.time()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO labels VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1) ON CONFLICT (annotator, task_id) DO UPDATE SET "
                "verdict = excluded.verdict, scores = excluded.scores, corrected = excluded.corrected, "
                "note = excluded.note, updated = excluded.updated, revision = labels.revision + 1",
                (annotator, tid, verdict, json.dumps(scores) if scores else None, corrected, note, now, now))
            row = conn.execute("SELECT * FROM labels WHERE annotator = ? AND task_id = ?", (annotator, tid)).fetchone()
        return _label_row(row)


LABEL_COLUMNS = ("annotator", "task_id", "verdict", "scores", "corrected", "note", "created", "updated", "revision")


def _label_row(row: tuple[Any, ...]) -> dict[str, Any]:
    out = dict(zip(LABEL_COLUMNS, row))
    out["scores"] = json.loads(out["scores"]) if out["scores"] else None
    return out


class _Transaction:
    """`with store._write() as conn:` — the lock held, BEGIN IMMEDIATE, COMMIT on success, ROLLBACK on error."""

    def __init__(self, lock: threading.Lock, conn: sqlite3.Connection):
        self.lock, self.conn = lock, conn

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.lock.release()
            raise
        return self.conn

    def __exit__(self, kind, *_: Any) -> None:
        try:
            self.conn.execute("COMMIT" if kind is None else "ROLLBACK")
        finally:
            self.lock.release()

