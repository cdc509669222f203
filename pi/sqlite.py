"""The one SQLite set-up shared by the outbox and the local store.

Both hold a person's physiology, so the data directory is private (0700) and every database file is 0600,
its -wal and -shm included (SQLite gives those the database file's mode when it creates them, so the file
is created 0600 before SQLite opens it, and files left by an older version are tightened). WAL mode, so a
reader never blocks the writer, and a busy timeout instead of an immediate "database is locked".

An existing database file is never opened here, only by SQLite: POSIX locks belong to the process, and
closing any descriptor of a file drops every lock the process holds on it, SQLite's included. The outbox's
second connection used to do that to the first one's lock; another process (a reader, a CLI) that then
closed its connection believed it was the last, checkpointed and deleted the -wal and -shm, and every later
commit went to the deleted WAL: invisible to other processes and lost when the writer was killed.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import stat
from pathlib import Path

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600
SIDE_FILES = ("", "-wal", "-shm", "-journal")


def private_dir(path: str | Path) -> Path:
    """Create `path` (0700), or tighten it to 0700 when it is ours and open to others."""
    path = Path(path)
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_mode & 0o077 and info.st_uid == os.geteuid():
        os.chmod(path, DIR_MODE)
    elif info.st_mode & 0o077:
        log.warning("data directory %s is readable by others (mode %o) and is not ours to tighten", path,
                    stat.S_IMODE(info.st_mode))
    return path


def connect(path: str | Path, synchronous: str = "FULL") -> sqlite3.Connection:
    """Open (creating if needed) a private WAL database for use from several threads under one lock.

    `synchronous`: FULL makes each commit durable when it returns (the outbox's promise); NORMAL may lose
    the last commits on a power cut but never corrupts (enough for the local store)."""
    if synchronous not in ("FULL", "NORMAL"):
        raise ValueError(f"synchronous must be FULL or NORMAL, got {synchronous!r}")
    path = Path(path)
    private_dir(path.parent)
    try:  # exists, 0600, before SQLite sees it; O_EXCL: never a descriptor of a file SQLite may hold (above)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE))
    except FileExistsError:
        pass
    for suffix in SIDE_FILES:
        side = path.with_name(path.name + suffix)
        try:
            if stat.S_IMODE(side.stat().st_mode) != FILE_MODE:
                os.chmod(side, FILE_MODE)
        except FileNotFoundError:
            pass
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA busy_timeout=5000")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    return db


def is_disk_full(exc: BaseException) -> bool:
    """True for SQLite's "database or disk is full" (SQLITE_FULL), however it was raised."""
    return isinstance(exc, sqlite3.Error) and (getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
                                               or "disk is full" in str(exc))
