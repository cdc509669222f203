"""The persistent outbox: every outgoing message is written to disk before it is sent and deleted only
when the broker acknowledges it (QoS 1 PUBACK), so Wi-Fi drops, broker restarts and power loss lose nothing
that was accepted. SQLite in WAL mode with synchronous=FULL: a committed row survives a power cut, and
`put()` returns only after its commit. One commit per message (the insert, and at the cap the drops with it).

Deletes are different: losing one to a power cut only means the message is sent again, which at-least-once
allows. So acknowledged messages are deleted in batches (`delete_many`, one statement for many PUBACKs)
through a second connection whose commits do not wait for the disk; the next durable `put()` makes them
durable too. That takes the second synchronous commit off every message without weakening what a power
cut can take. Few calls into SQLite matter as much as few syncs: each releases and retakes the GIL.

Bounded: past `max_messages` the oldest *training records* are dropped first (windows and results are
rare and each is a person's answer, so they are kept); every drop is logged and counted, and the count is
reported in the status message. Nothing vanishes silently.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pi import sqlite as db_setup
from pi.errors import PublishError

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL,
    retain INTEGER NOT NULL, kind TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
DROPPABLE_FIRST = "train"
INSERT = "INSERT INTO outbox (topic, payload, qos, retain, kind, created) VALUES (?,?,?,?,?,?)"


class OutboxError(PublishError):
    """The outbox could not store a message (a full disk, most often): the message was not accepted."""

    def __init__(self, message: str, disk_full: bool):
        super().__init__(message)
        self.disk_full = disk_full


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
        self.max_messages = max_messages
        self._db = db_setup.connect(self.path, synchronous="FULL")
        self._db.executescript(SCHEMA)
        self._deleter = db_setup.connect(self.path, synchronous="NORMAL")  # see delete_many
        self._lock = threading.Lock()
        # rows are counted once here, then kept in step with inserts and deletes (no scan per message)
        self._count = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def put(self, topic: str, payload: bytes, qos: int, retain: bool, kind: str) -> int:
        """Store one message durably (committed and synced when this returns); return its id (ids increase
        in publish order). Raises OutboxError, and stores nothing, when SQLite cannot write."""
        row = (topic, payload, qos, int(retain), kind, time.time())
        with self._lock:
            try:
                if self._count < self.max_messages:  # one statement, its own transaction: one call, one sync
                    row_id, dropped = self._db.execute(INSERT, row).lastrowid, 0
                else:
                    row_id, dropped = self._put_dropping(row)
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox {self.path.name} cannot store the message: {exc}",
                                  db_setup.is_disk_full(exc)) from exc
            self._count += 1 - dropped
        if dropped:
            log.warning("outbox full (%d messages): dropped the %d oldest unsent message(s), training records "
                        "first; detection windows and results are kept", self.max_messages, dropped)
        assert row_id is not None  # an INSERT into a rowid table always has one
        return row_id

    def _put_dropping(self, row: tuple) -> tuple[int | None, int]:
        """At the cap: the insert and the drops in one transaction (all or nothing)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            row_id = self._db.execute(INSERT, row).lastrowid
            dropped = self._enforce_cap(self._count + 1)
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:  # SQLite may have rolled back by itself (SQLITE_FULL)
                self._db.execute("ROLLBACK")
            raise
        return row_id, dropped

    def _enforce_cap(self, count: int) -> int:
        """Inside put()'s transaction: drop the excess over max_messages; return how many went."""
        excess = count - self.max_messages
        if excess <= 0:
            return 0
        victims = self._db.execute("SELECT id FROM outbox WHERE kind = ? ORDER BY id LIMIT ?",
                                   (DROPPABLE_FIRST, excess)).fetchall()
        if len(victims) < excess:  # nothing but windows/results left: drop the oldest of those
            victims += self._db.execute("SELECT id FROM outbox WHERE kind != ? ORDER BY id LIMIT ?",
                                        (DROPPABLE_FIRST, excess - len(victims))).fetchall()
        self._db.executemany("DELETE FROM outbox WHERE id = ?", victims)
        self._db.execute("INSERT INTO counters VALUES ('dropped', ?) ON CONFLICT(name) DO UPDATE SET "
                         "value = value + excluded.value", (len(victims),))
        return len(victims)

    def after(self, last_id: int, limit: int) -> list[Pending]:
        """Up to `limit` stored messages with id > last_id, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT id, topic, payload, qos, retain FROM outbox WHERE id > ? ORDER BY id "
                                    "LIMIT ?", (last_id, limit)).fetchall()
        return [Pending(r[0], r[1], bytes(r[2]), r[3], bool(r[4])) for r in rows]

    def delete(self, row_id: int) -> None:
        """Delete one message (acknowledged); see delete_many."""
        self.delete_many((row_id,))

    def delete_many(self, row_ids: Iterable[int]) -> None:
        """Delete acknowledged messages in one statement through a second connection with
        synchronous=NORMAL: the commit does not wait for the disk, and a power cut may undo it, which only
        means those messages are sent again. Raises sqlite3.Error."""
        ids = list(row_ids)
        with self._lock:
            for start in range(0, len(ids), 500):  # under SQLite's limit on bound parameters
                chunk = ids[start:start + 500]
                self._count -= self._deleter.execute(
                    f"DELETE FROM outbox WHERE id IN ({','.join('?' * len(chunk))})", chunk).rowcount

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
            self._deleter.close()
            self._db.close()
