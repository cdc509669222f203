"""The tables the importers own, in the device's own store (`records.sqlite` in the data directory).

They sit beside the store's `records`/`detections`/`feedback` tables but are created and written only
here, through a connection of their own: the daemon may be writing detections at the same time, which
SQLite's WAL mode and a busy timeout make safe. A store file created here is private (mode 600), like the
rest of the data directory; an existing file's mode is never changed.

Time stamps: `start_local`/`end_local` are the tracker's wall-clock times exactly as exported (no zone);
`end_utc` is `end_local` read in `timezone` (the zone named at import) and converted to UTC, the form the
device's own results use. Mood report times are stored in UTC.
"""
from __future__ import annotations

import os
import sqlite3
from datetime import datetime, timezone, tzinfo
from pathlib import Path

STORE_FILE = "records.sqlite"  # the LocalStore's file (pi/service/store.py); shared on purpose

SCHEMA = """
CREATE TABLE IF NOT EXISTS sleep_nights (
    user TEXT NOT NULL, log_id TEXT NOT NULL, date_of_sleep TEXT NOT NULL,
    start_local TEXT, end_local TEXT, end_utc TEXT, timezone TEXT NOT NULL,
    minutes_asleep INTEGER NOT NULL, minutes_awake INTEGER, time_in_bed INTEGER, efficiency REAL,
    main_sleep INTEGER NOT NULL, source TEXT NOT NULL, source_file TEXT NOT NULL, imported TEXT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (user, log_id));
CREATE INDEX IF NOT EXISTS sleep_nights_date ON sleep_nights (user, date_of_sleep);
CREATE TABLE IF NOT EXISTS mood_reports (
    user TEXT NOT NULL, timestamp TEXT NOT NULL, mood REAL, source_file TEXT NOT NULL, imported TEXT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (user, timestamp));
"""


def store_path(cfg: dict) -> Path:
    return Path(cfg["device"]["data_dir"]) / STORE_FILE


def connect(path: str | Path) -> sqlite3.Connection:
    """Open (creating, mode 600, if absent) the store and make sure the importers' tables exist.

    Autocommit mode: callers group their writes in explicit `BEGIN IMMEDIATE ... COMMIT` transactions so
    that a rejected file leaves nothing behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    db = sqlite3.connect(path, isolation_level=None, timeout=10.0)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(SCHEMA)
    return db


def has_table(db: sqlite3.Connection, name: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


def iso_utc(moment: datetime) -> str:
    """UTC ISO 8601 with milliseconds and a Z: the form of every time stamp the device writes, so that
    string order is time order in SQL."""
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def local_zone(name: str | None) -> tuple[tzinfo, str]:
    """The zone `name` (IANA), or this machine's own zone when None; returned with a name to record.

    The machine's zone comes from $TZ, /etc/timezone, the /etc/localtime link, or the /etc/localtime file
    itself, in that order; UTC when none of them says."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    def named(key: str | None):
        if not key:
            return None
        try:
            return ZoneInfo(key.lstrip(":"))
        except (ZoneInfoNotFoundError, ValueError):
            return None

    if name is not None:
        return ZoneInfo(name), name
    candidates = [os.environ.get("TZ")]
    try:
        candidates.append(Path("/etc/timezone").read_text().strip())
    except OSError:
        pass
    try:
        link = os.readlink("/etc/localtime")
        if "zoneinfo/" in link:
            candidates.append(link.split("zoneinfo/", 1)[1])
    except OSError:
        pass
    for key in candidates:
        zone = named(key)
        if zone is not None:
            return zone, zone.key
    try:
        with open("/etc/localtime", "rb") as f:
            return ZoneInfo.from_file(f, key="localtime"), "localtime"
    except (OSError, ValueError):
        return timezone.utc, "UTC"


def zone_named(name: str) -> tzinfo:
    """The zone recorded with a night (see `local_zone`), for reading its dates again."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if name == "UTC":
        return timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return local_zone(None)[0]  # "localtime": this machine's zone file
