"""The persistent outbox: every outgoing message is written to disk before it is sent and deleted only
when the broker acknowledges it (QoS 1 PUBACK), so Wi-Fi drops, broker restarts and power loss lose nothing
that was accepted. SQLite in WAL mode with synchronous=FULL: a committed row survives a power cut.

Bounded: past `max_messages` the oldest *training records* are dropped first (windows and results are
rare and each is a person's answer, so they are kept); every drop is logged and counted, and the count is
reported in the status message. Nothing vanishes silently.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL,
    retain INTEGER NOT NULL, kind TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
DROPPABLE_FIRST = "train"


@dataclass(frozen=True)
class Pending:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Outbox:
    def __init__(self, path: str | Path, max_messages: int = 100_000):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_messages = max_messages
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()
        # rows are counted once here, then kept in step with inserts and deletes (no scan per message)
        self._count = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def put(self, topic: str, payload: bytes, qos: int, retain: bool, kind: str) -> int:
        """Store one message durably; return its id (ids increase in publish order)."""
        with self._lock:
            cur = self._db.execute("INSERT INTO outbox (topic, payload, qos, retain, kind, created) "
                                   "VALUES (?,?,?,?,?,?)", (topic, payload, qos, int(retain), kind, time.time()))
            row_id = cur.lastrowid
            self._count += 1
            self._enforce_cap()
        return row_id

    def _enforce_cap(self) -> None:
        excess = self._count - self.max_messages
        if excess <= 0:
            return
        victims = self._db.execute("SELECT id FROM outbox WHERE kind = ? ORDER BY id LIMIT ?",
                                   (DROPPABLE_FIRST, excess)).fetchall()
        if len(victims) < excess:  # nothing but windows/results left: drop the oldest of those
            victims += self._db.execute("SELECT id FROM outbox WHERE kind != ? ORDER BY id LIMIT ?",
                                        (DROPPABLE_FIRST, excess - len(victims))).fetchall()
        self._db.executemany("DELETE FROM outbox WHERE id = ?", victims)
        self._count -= len(victims)
        self._db.execute("INSERT INTO counters VALUES ('dropped', ?) ON CONFLICT(name) DO UPDATE SET "
                         "value = value + excluded.value", (len(victims),))
        log.warning("outbox full (%d messages): dropped the %d oldest unsent message(s), training records "
                    "first; detection windows and results are kept", self.max_messages, len(victims))

    def after(self, last_id: int, limit: int) -> list[Pending]:
        """Up to `limit` stored messages with id > last_id, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT id, topic, payload, qos, retain FROM outbox WHERE id > ? ORDER BY id "
                                    "LIMIT ?", (last_id, limit)).fetchall()
        return [Pending(r[0], r[1], bytes(r[2]), r[3], bool(r[4])) for r in rows]

    def delete(self, row_id: int) -> None:
        with self._lock:
            self._count -= self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,)).rowcount

    def __len__(self) -> int:
        with self._lock:
            return self._count

    @property
    def dropped(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
        return row[0] if row else 0

    def close(self) -> None:
        with self._lock:
            self._db.close()
