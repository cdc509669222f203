"""Import daily self-reported mood (`emotion-edge mood import`), as an alternative to the device's own
results or a check on them.

The format is PMData's `pmsys/wellness.csv` (PMSys morning questionnaire): a header row with a time stamp
column `effective_time_frame` (or `timestamp`) and a numeric `mood` column; other columns are kept with
the row but not used. Mood is on PMSys' 1-5 scale (higher is better).

- Time stamps with a zone (PMData's end in `Z`) are converted to UTC; time stamps without one are read in
  `sleep.timezone` (or `--tz`; default this device's zone). Reports are stored in UTC, keyed by
  (user, time stamp), so a re-import is idempotent.
- A mood of **0 is off the 1-5 scale and is read as "not answered"**: PMSys writes 0 for an unanswered
  item (PMData has whole rows of zeros). Such rows are stored with mood NULL, counted, and never used as
  a score. An empty mood cell is the same. Any other value outside 1-5, or text, is an error.
- Errors (an unreadable or empty file, a missing column, a bad time stamp or mood, one time stamp twice
  with different values, a report in the future): `ImportDataError` naming the file and line; nothing of
  the file is written.
"""
from __future__ import annotations

import csv
import json
import math
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo
from pathlib import Path

from pi.errors import ImportDataError
from pi.ingest.tables import iso_utc

TIME_COLUMNS = ("effective_time_frame", "timestamp")
MOOD_MIN, MOOD_MAX = 1, 5
UNANSWERED = 0


@dataclass
class MoodReport:
    timestamp: str  # UTC ISO with Z
    mood: float | None
    where: str
    record: dict


@dataclass
class MoodImportSummary:
    user: str
    file: str
    timezone: str
    reports: int = 0
    unanswered: int = 0
    merged_repeats: int = 0
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    first: str | None = None
    last: str | None = None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def read_mood_csv(path: str | Path, zone: tzinfo, now: datetime) -> tuple[list[MoodReport], int]:
    """The validated reports of one file (repeats merged) and how many repeats were merged."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportDataError(f"{path}: cannot read: {exc}") from None
    if not text.strip():
        raise ImportDataError(f"{path}: the file is empty")
    reader = csv.DictReader(text.splitlines())
    columns = [c.strip() for c in reader.fieldnames or []]
    time_col = next((c for c in TIME_COLUMNS if c in columns), None)
    if time_col is None or "mood" not in columns:
        raise ImportDataError(f"{path}: header must name a time stamp ({' or '.join(TIME_COLUMNS)}) and mood; got "
                              f"{', '.join(columns) or 'nothing'}")
    by_time: dict[str, MoodReport] = {}
    merged = 0
    for line, raw in enumerate(reader, start=2):
        where = f"{path}: line {line}"
        if None in raw:
            raise ImportDataError(f"{where}: more values than the header has columns")
        row = {k.strip(): (v or "").strip() for k, v in raw.items()}
        stamp = row[time_col]
        try:
            moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        except ValueError:
            raise ImportDataError(f"{where}: {time_col} is not an ISO 8601 time stamp: {stamp!r}") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=zone)
        if moment > now:
            raise ImportDataError(f"{where}: {stamp} is in the future")
        text_mood = row["mood"]
        try:
            value = float(text_mood) if text_mood else None
        except ValueError:
            raise ImportDataError(f"{where}: mood must be a number, got {text_mood!r}") from None
        if value is not None and (not math.isfinite(value) or
                                  (value != UNANSWERED and not MOOD_MIN <= value <= MOOD_MAX)):
            raise ImportDataError(f"{where}: mood must be {MOOD_MIN}-{MOOD_MAX} (or {UNANSWERED}: not answered), "
                                  f"got {text_mood!r}")
        report = MoodReport(iso_utc(moment), None if value in (None, UNANSWERED) else value, where, row)
        first = by_time.get(report.timestamp)
        if first is not None:
            if first.record != report.record:
                raise ImportDataError(f"{where}: time stamp {stamp} also on {first.where} with other values")
            merged += 1
        by_time[report.timestamp] = report
    if not by_time:
        raise ImportDataError(f"{path}: a header but no reports")
    return list(by_time.values()), merged


def import_mood(db: sqlite3.Connection, user: str, path: str | Path, zone: tzinfo, zone_name: str,
                now: datetime | None = None) -> MoodImportSummary:
    """Validate the whole file, then write it in one transaction."""
    now = now or datetime.now(timezone.utc)
    reports, merged = read_mood_csv(path, zone, now)
    summary = MoodImportSummary(user, str(path), zone_name, merged_repeats=merged)
    imported = iso_utc(now)
    db.execute("BEGIN IMMEDIATE")
    try:
        previous = dict(db.execute("SELECT timestamp, record FROM mood_reports WHERE user = ?", (user,)).fetchall())
        for r in reports:
            record = json.dumps(r.record, sort_keys=True, separators=(",", ":"))
            if previous.get(r.timestamp) == record:
                summary.unchanged += 1
                continue
            summary.updated += r.timestamp in previous
            summary.new += r.timestamp not in previous
            db.execute("INSERT OR REPLACE INTO mood_reports VALUES (?,?,?,?,?,?)",
                       (user, r.timestamp, r.mood, str(path), imported, record))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    summary.reports = len(reports)
    summary.unanswered = sum(r.mood is None for r in reports)
    stamps = sorted(r.timestamp for r in reports)
    summary.first, summary.last = stamps[0], stamps[-1]
    return summary
