"""The local store: every training record and detection, per user, in SQLite (WAL), so that personal
models can be trained on the device without a cloud."""
from __future__ import annotations

import json
import threading
from pathlib import Path

from pi import sqlite as db_setup

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    session_id TEXT NOT NULL, seq INTEGER NOT NULL, user TEXT NOT NULL, label TEXT NOT NULL,
    timestamp TEXT NOT NULL, skin_conductance REAL, bpm REAL, quality TEXT NOT NULL, message TEXT NOT NULL,
    PRIMARY KEY (session_id, seq));
CREATE INDEX IF NOT EXISTS records_user ON records (user, label);
CREATE TABLE IF NOT EXISTS detections (
    request_id TEXT PRIMARY KEY, user TEXT NOT NULL, timestamp TEXT NOT NULL,
    window TEXT NOT NULL, result TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS collect_sessions (
    session_id TEXT PRIMARY KEY, user TEXT NOT NULL, label TEXT NOT NULL, duration_s REAL NOT NULL,
    started REAL NOT NULL, state TEXT NOT NULL, records INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS feedback (
    request_id TEXT PRIMARY KEY REFERENCES detections(request_id), user TEXT NOT NULL, label TEXT NOT NULL,
    received REAL NOT NULL);
"""


class LocalStore:
    """Thread-safe; one connection guarded by a lock (writes are a few per second)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._db = db_setup.connect(self.path, synchronous="NORMAL")  # private files, WAL; see pi.sqlite
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def add_record(self, message: dict) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO records VALUES (?,?,?,?,?,?,?,?,?)",
                (message["session_id"], message["seq"], message["user"], message["mood"],
                 message["timestamp"], message["skin_conductance"], message["bpm"], message["quality"],
                 json.dumps(message)))

    def add_records(self, messages: list[dict]) -> None:
        """Many records in one transaction: an import is stored whole or not at all."""
        rows = [(m["session_id"], m["seq"], m["user"], m["mood"], m["timestamp"], m["skin_conductance"], m["bpm"],
                 m["quality"], json.dumps(m)) for m in messages]
        with self._lock:
            try:
                self._db.execute("BEGIN")
                self._db.executemany("INSERT OR REPLACE INTO records VALUES (?,?,?,?,?,?,?,?,?)", rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def add_detection(self, window: dict, result: dict) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO detections VALUES (?,?,?,?,?)",
                             (result["request_id"], result["user"], result["timestamp"], json.dumps(window),
                              json.dumps(result)))

    def records(self, user: str | None = None) -> list[dict]:
        query = "SELECT message FROM records" + (" WHERE user = ?" if user else "") + " ORDER BY session_id, seq"
        with self._lock:
            rows = self._db.execute(query, (user,) if user else ()).fetchall()
        return [json.loads(r[0]) for r in rows]

    def detection(self, request_id: str) -> tuple[dict, dict] | None:
        with self._lock:
            row = self._db.execute("SELECT window, result FROM detections WHERE request_id = ?",
                                   (request_id,)).fetchone()
        return None if row is None else (json.loads(row[0]), json.loads(row[1]))

    # -- collect sessions: a session still 'running' when a process starts was cut short by a crash ----------
    def begin_session(self, session_id: str, user: str, label: str, duration_s: float, started: float) -> None:
        with self._lock:
            self._db.execute("INSERT INTO collect_sessions VALUES (?,?,?,?,?,'running',0)",
                             (session_id, user, label, duration_s, started))

    def end_session(self, session_id: str, records: int, state: str) -> None:
        """`state`: completed, stopped (ended early on request) or interrupted (found after a crash)."""
        with self._lock:
            self._db.execute("UPDATE collect_sessions SET state = ?, records = ? WHERE session_id = ?",
                             (state, records, session_id))

    def unfinished_sessions(self) -> list[dict]:
        """Sessions left 'running' by an earlier process, with the records they had stored."""
        with self._lock:
            rows = self._db.execute(
                "SELECT s.session_id, s.user, s.label, s.duration_s, s.started, "
                "(SELECT COUNT(*) FROM records r WHERE r.session_id = s.session_id) "
                "FROM collect_sessions s WHERE s.state = 'running' ORDER BY s.started").fetchall()
        keys = ("session_id", "user", "label", "duration_s", "started", "records")
        return [dict(zip(keys, row)) for row in rows]

    def add_feedback(self, request_id: str, user: str, label: str, received: float) -> None:
        """A carer's true label for a detection; a second correction of the same request replaces it."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO feedback VALUES (?,?,?,?)", (request_id, user, label, received))

    def feedback(self, user: str) -> list[tuple[str, str, dict, dict]]:
        """(request_id, label, window, result) of the user's corrections, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT f.request_id, f.label, d.window, d.result FROM feedback f JOIN detections d "
                "USING (request_id) WHERE f.user = ? ORDER BY f.received, f.rowid", (user,)).fetchall()
        return [(r[0], r[1], json.loads(r[2]), json.loads(r[3])) for r in rows]

    def recent_detections(self, limit: int = 50, user: str | None = None, day: str | None = None) -> list[dict]:
        """The newest results first, each with the carer's correction (`feedback_label`) if one was given;
        `day` is a UTC date (YYYY-MM-DD) matched against the result's timestamp."""
        where, args = [], []
        if user:
            where.append("d.user = ?")
            args.append(user)
        if day:
            where.append("substr(d.timestamp, 1, 10) = ?")
            args.append(day)
        query = ("SELECT d.result, f.label FROM detections d LEFT JOIN feedback f USING (request_id)"
                 + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY d.timestamp DESC LIMIT ?")
        with self._lock:
            rows = self._db.execute(query, (*args, limit)).fetchall()
        return [{**json.loads(r[0]), "feedback_label": r[1]} for r in rows]

    def detection_users(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT DISTINCT user FROM detections ORDER BY user")]

    def feedback_label(self, request_id: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT label FROM feedback WHERE request_id = ?", (request_id,)).fetchone()
        return None if row is None else row[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
