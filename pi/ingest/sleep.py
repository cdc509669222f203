"""Import nights of sleep from a wearable into the local store (`emotion-edge sleep import`).

Two formats:

- **Fitbit's own export**: a `sleep-*.json` file (a Fitbit account export writes one per 30 days) or any
  JSON file holding the same array, or a folder of them (`sleep*.json` directly inside it). Each element is
  a sleep log with `logId`, `dateOfSleep`, `startTime`, `endTime`, `minutesAsleep`, `minutesAwake`,
  `timeInBed`, `efficiency`, `mainSleep` and `levels`. The 30-second stage timeline (`levels.data`) is not
  kept; the rest of the log is, as JSON.
- **CSV** for other trackers: a header row and `date,minutes_asleep[,efficiency][,end_time]`. `end_time`
  (the wake time, local `HH:MM` or `YYYY-MM-DD HH:MM`) is an optional extension: without it a night pairs
  with self-reported mood by date but has no morning window for the device's own results. CSV nights are
  taken as main sleeps and keyed `csv-<date>`.

Rules, so that a re-import is idempotent and nothing is half-imported:

- A night is keyed by (user, log id). Importing the same file again changes nothing; a changed log
  replaces the stored one.
- Fitbit's 30-day files repeat the night at their boundary with different `thirtyDayAvgMinutes`: logs
  with one id that agree on every measured field are merged; logs with one id that disagree are an error.
- Naps (`mainSleep: false`) are stored with `main_sleep = 0`; the report leaves them out and counts them.
- Errors (unreadable or malformed JSON/CSV, a missing or wrong field, two different logs that overlap in
  time, within the file or with nights already stored for the user, a night in the future, an empty file):
  `ImportDataError` naming the file and the record; nothing of the import is written.

Time zone: Fitbit writes local wall-clock times without a zone. They are stored as exported, and the wake
time is also stored in UTC, read in `sleep.timezone` (or `--tz`; default this device's own zone) and
converted with the zone's rules for that date (daylight saving included; a wall time that occurs twice is
read as the first, one that does not exist as if the clocks had not changed yet). The zone used is stored
with each night.
"""
from __future__ import annotations

import csv
import json
import math
import sqlite3
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any

from pi.errors import ImportDataError
from pi.ingest.tables import iso_utc

FITBIT_REQUIRED = ("logId", "dateOfSleep", "startTime", "endTime", "minutesAsleep", "minutesAwake", "timeInBed",
                   "efficiency", "mainSleep")
# the fields that describe the night itself: logs sharing an id must agree on these to be merged
MEASURED = FITBIT_REQUIRED[1:]
MAX_MINUTES = 24 * 60


@dataclass
class Night:
    log_id: str
    date: date
    start_local: datetime | None
    end_local: datetime | None
    minutes_asleep: int
    minutes_awake: int | None
    time_in_bed: int | None
    efficiency: float | None
    main_sleep: bool
    source: str  # fitbit-json or csv
    where: str  # "FILE: record N (logId X)", for error messages
    file: str
    record: dict = field(repr=False, default_factory=dict)


@dataclass
class ImportSummary:
    user: str
    files: list[str]
    timezone: str
    nights: int = 0  # main sleeps in the input (after merging repeats)
    naps: int = 0
    merged_repeats: int = 0
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    first: str | None = None
    last: str | None = None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _problem(where: str, why: str) -> ImportDataError:
    return ImportDataError(f"{where}: {why}")


def _int(value: Any, where: str, name: str, lo: int = 0, hi: int = MAX_MINUTES) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value != int(value):
        raise _problem(where, f"{name} must be a whole number, got {value!r}")
    if not lo <= value <= hi:
        raise _problem(where, f"{name} must be between {lo} and {hi}, got {value!r}")
    return int(value)


def _efficiency(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise _problem(where, f"efficiency must be a number from 0 to 100, got {value!r}")
    return float(value)


def _local_time(value: Any, where: str, name: str) -> datetime:
    """A tracker's local wall-clock time: 'YYYY-MM-DD HH:MM:SS' or 'YYYY-MM-DDTHH:MM:SS.fff', no zone."""
    if not isinstance(value, str):
        raise _problem(where, f"{name} must be a date-time string, got {value!r}")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _problem(where, f"{name} is not a date-time: {value!r}") from None
    if moment.tzinfo is not None:
        raise _problem(where, f"{name} carries a zone ({value!r}); Fitbit exports local times without one")
    return moment


def _date(value: Any, where: str, name: str) -> date:
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise _problem(where, f"{name} must be a date YYYY-MM-DD, got {value!r}")


def _without_timeline(log: dict) -> dict:
    kept = dict(log)
    if isinstance(kept.get("levels"), dict):
        kept["levels"] = {k: v for k, v in kept["levels"].items() if k not in ("data", "shortData")}
    return kept


def parse_fitbit_log(log: Any, where: str, file: str) -> Night:
    """One validated Fitbit sleep log."""
    if not isinstance(log, dict):
        raise _problem(where, f"a sleep log must be a JSON object, got {type(log).__name__}")
    missing = [k for k in FITBIT_REQUIRED if k not in log]
    if missing:
        raise _problem(where, f"missing field(s) {', '.join(missing)}")
    log_id = log["logId"]
    if isinstance(log_id, bool) or not isinstance(log_id, (int, str)) or str(log_id).strip() == "":
        raise _problem(where, f"logId must be a number or a non-empty string, got {log_id!r}")
    start = _local_time(log["startTime"], where, "startTime")
    end = _local_time(log["endTime"], where, "endTime")
    night = _date(log["dateOfSleep"], where, "dateOfSleep")
    if end <= start:
        raise _problem(where, f"endTime {log['endTime']} is not after startTime {log['startTime']}")
    if not start.date() <= night <= end.date():
        raise _problem(where, f"dateOfSleep {night} is outside the log's own times ({start} to {end})")
    asleep = _int(log["minutesAsleep"], where, "minutesAsleep")
    awake = _int(log["minutesAwake"], where, "minutesAwake")
    in_bed = _int(log["timeInBed"], where, "timeInBed")
    span = (end - start).total_seconds() / 60
    if in_bed > span + 1:
        raise _problem(where, f"timeInBed {in_bed} min is longer than startTime to endTime ({span:.0f} min)")
    if asleep > in_bed:
        raise _problem(where, f"minutesAsleep {asleep} is more than timeInBed {in_bed}")
    if not isinstance(log["mainSleep"], bool):
        raise _problem(where, f"mainSleep must be true or false, got {log['mainSleep']!r}")
    if "levels" in log and not isinstance(log["levels"], dict):
        raise _problem(where, f"levels must be an object, got {type(log['levels']).__name__}")
    return Night(str(log_id), night, start, end, asleep, awake, in_bed, _efficiency(log["efficiency"], where),
                 log["mainSleep"], "fitbit-json", where, file, _without_timeline(log))


def read_fitbit_file(path: Path) -> list[Night]:
    """Every log of one Fitbit sleep JSON file (possibly none: an export's 30-day file can be `[]`)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportDataError(f"{path}: cannot read: {exc}") from None
    if not text.strip():
        raise ImportDataError(f"{path}: the file is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ImportDataError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") \
            from None
    if isinstance(data, dict) and isinstance(data.get("sleep"), list):  # the Web API's response shape
        data = data["sleep"]
    if not isinstance(data, list):
        raise ImportDataError(f"{path}: expected a JSON array of sleep logs, got {type(data).__name__}")
    nights = []
    for i, log in enumerate(data):
        log_id = log.get("logId") if isinstance(log, dict) else None
        where = f"{path}: record {i}" + (f" (logId {log_id})" if log_id is not None else "")
        nights.append(parse_fitbit_log(log, where, str(path)))
    return nights


def _wake_time(text: str, night: date, where: str) -> datetime:
    text = text.strip()
    try:
        if len(text) <= 5:  # HH:MM on the night's date
            return datetime.combine(night, datetime.strptime(text, "%H:%M").time())
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise _problem(where, f"end_time must be HH:MM or YYYY-MM-DD HH:MM, got {text!r}") from None
    if moment.tzinfo is not None:
        raise _problem(where, "end_time is a local time: give it without a zone")
    return moment


def read_csv_file(path: Path) -> list[Night]:
    """`date,minutes_asleep[,efficiency][,end_time]` with a header; one main sleep a date."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportDataError(f"{path}: cannot read: {exc}") from None
    if not text.strip():
        raise ImportDataError(f"{path}: the file is empty")
    reader = csv.DictReader(text.splitlines())
    columns = [c.strip() for c in reader.fieldnames or []]
    missing = [c for c in ("date", "minutes_asleep") if c not in columns]
    if missing:
        raise ImportDataError(f"{path}: header must name date and minutes_asleep (missing {', '.join(missing)}); "
                              f"got {', '.join(columns) or 'nothing'}")
    nights: list = []
    seen: dict[date, int] = {}
    for line, raw in enumerate(reader, start=2):
        where = f"{path}: line {line}"
        if None in raw:  # DictReader's key for values beyond the header's columns
            raise _problem(where, "more values than the header has columns")
        row = {k.strip(): (v or "").strip() for k, v in raw.items()}
        day = _date(row["date"], where, "date")
        if day in seen:
            raise _problem(where, f"date {day} already given on line {seen[day]}")
        seen[day] = line
        try:
            minutes = float(row["minutes_asleep"])
        except ValueError:
            raise _problem(where, f"minutes_asleep must be a number, got {row['minutes_asleep']!r}") from None
        asleep = _int(minutes, where, "minutes_asleep")
        try:
            efficiency = _efficiency(float(row["efficiency"]), where) if row.get("efficiency") else None
        except ValueError:
            raise _problem(where, f"efficiency must be a number from 0 to 100, got {row['efficiency']!r}") from None
        end = _wake_time(row["end_time"], day, where) if row.get("end_time") else None
        start = end - timedelta(minutes=asleep) if end is not None else None
        nights.append(Night(f"csv-{day.isoformat()}", day, start, end, asleep, None, None, efficiency, True,
                            "csv", where, str(path), {k: v for k, v in row.items() if k}))
    if not nights:
        raise ImportDataError(f"{path}: a header but no nights")
    return nights


def read_path(path: str | Path) -> tuple[list[Night], list[str]]:
    """The nights in a file or a folder of Fitbit `sleep*.json` files, and the files read."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.glob("sleep*.json") if p.is_file())
        if not files:
            raise ImportDataError(f"{path}: no sleep*.json file in this folder")
    elif path.is_file():
        files = [path]
    else:
        raise ImportDataError(f"{path}: no such file or folder")
    nights: list[Night] = []
    for f in files:
        nights += read_csv_file(f) if f.suffix.lower() == ".csv" else read_fitbit_file(f)
    if not nights:
        raise ImportDataError(f"{path}: no sleep logs in {', '.join(map(str, files))}")
    return nights, [str(f) for f in files]


def merge_repeats(nights: list[Night]) -> tuple[list[Night], int]:
    """One night per log id: repeats that agree on the measured fields collapse to the last one read
    (a later 30-day file has the fuller 30-day averages); repeats that disagree are an error."""
    by_id: dict[str, Night] = {}
    merged = 0
    for night in nights:
        first = by_id.get(night.log_id)
        if first is not None:
            if night.source != "fitbit-json" or any(first.record.get(k) != night.record.get(k) for k in MEASURED):
                raise _problem(night.where, f"logId {night.log_id} also at {first.where} with different values")
            merged += 1
        by_id[night.log_id] = night
    return list(by_id.values()), merged


def _overlaps(a: tuple, b: tuple) -> bool:
    """(log_id, date, start, end, main) pairs: timed logs overlap in time; a log without times (CSV
    without end_time) occupies its whole date, and conflicts with another main sleep of that date."""
    if a[2] is not None and b[2] is not None:
        return a[2] < b[3] and b[2] < a[3]
    return a[1] == b[1] and a[4] and b[4]


def check_overlaps(nights: list[Night], stored: list[tuple]) -> None:
    """No two different logs of one person may overlap: one would count the same sleep twice."""
    mine = sorted(((n.log_id, n.date, n.start_local, n.end_local, n.main_sleep, n.where) for n in nights),
                  key=lambda t: (t[2] or datetime.combine(t[1], datetime.min.time()), t[0]))
    timed = [t for t in mine if t[2] is not None]
    for a, b in zip(timed, timed[1:]):  # sorted by start: an overlap shows between neighbours
        if _overlaps(a, b):
            raise _problem(b[5], f"overlaps {a[5]} ({a[2]} to {a[3]} against {b[2]} to {b[3]})")
    untimed = [t for t in mine if t[2] is None]
    by_date: dict[date, list[tuple]] = {}
    for t in mine:
        by_date.setdefault(t[1], []).append(t)
    for t in untimed:
        for other in by_date[t[1]]:
            if other[0] != t[0] and _overlaps(t, other):
                raise _problem(t[5], f"a night of {t[1]} is also at {other[5]}")
    ids = {n.log_id for n in nights}
    for s in stored:
        if s[0] in ids:
            continue
        for t in mine:
            if _overlaps(t, s):
                raise _problem(t[5], f"overlaps the stored night {s[0]} of {s[1]} (imported from {s[5]}); "
                               "remove one of them")


def check_not_future(nights: list[Night], zone: tzinfo, now: datetime) -> None:
    today = now.astimezone(zone)
    for n in nights:
        if n.date > today.date() or (n.end_local is not None and n.end_local > today.replace(tzinfo=None)):
            raise _problem(n.where, f"the night of {n.date} (ending {n.end_local or n.date}) is in the future "
                           f"(now {today:%Y-%m-%d %H:%M} in {getattr(zone, 'key', zone)})")


def _stored(db: sqlite3.Connection, user: str) -> list[tuple]:
    rows = db.execute("SELECT log_id, date_of_sleep, start_local, end_local, main_sleep, source_file, record, "
                      "timezone "
                      "FROM sleep_nights WHERE user = ?", (user,)).fetchall()
    return [(r[0], date.fromisoformat(r[1]), datetime.fromisoformat(r[2]) if r[2] else None,
             datetime.fromisoformat(r[3]) if r[3] else None, bool(r[4]), r[5], (r[6], r[7])) for r in rows]


def import_sleep(db: sqlite3.Connection, user: str, path: str | Path, zone: tzinfo, zone_name: str,
                 now: datetime | None = None) -> ImportSummary:
    """Validate everything in `path`, then write it in one transaction; see the module docstring."""
    now = now or datetime.now(timezone.utc)
    nights, files = read_path(path)
    nights, merged = merge_repeats(nights)
    check_not_future(nights, zone, now)
    summary = ImportSummary(user, files, zone_name, merged_repeats=merged)
    imported = iso_utc(now)
    db.execute("BEGIN IMMEDIATE")  # the overlap check and the writes see one state of the table
    try:
        stored = _stored(db, user)
        check_overlaps(nights, stored)
        previous = {s[0]: s[6] for s in stored}
        for n in nights:
            record = json.dumps(n.record, sort_keys=True, separators=(",", ":"))
            end_utc = None if n.end_local is None else iso_utc(n.end_local.replace(tzinfo=zone))
            if previous.get(n.log_id) == (record, zone_name):
                summary.unchanged += 1
                continue
            summary.updated += n.log_id in previous
            summary.new += n.log_id not in previous
            db.execute(
                "INSERT OR REPLACE INTO sleep_nights VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (user, n.log_id, n.date.isoformat(),
                 None if n.start_local is None else n.start_local.isoformat(sep=" "),
                 None if n.end_local is None else n.end_local.isoformat(sep=" "), end_utc, zone_name,
                 n.minutes_asleep, n.minutes_awake, n.time_in_bed, n.efficiency, int(n.main_sleep), n.source,
                 n.file, imported, record))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    summary.nights = sum(n.main_sleep for n in nights)
    summary.naps = len(nights) - summary.nights
    dates = sorted(n.date for n in nights)
    summary.first, summary.last = dates[0].isoformat(), dates[-1].isoformat()
    return summary
