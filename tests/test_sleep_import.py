"""Sleep and mood imports: formats, idempotence, time zones, and every kind of bad input rejected whole."""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import run_cli

from pi.errors import ImportDataError
from pi.ingest import mood, sleep, tables

OSLO = ZoneInfo("Europe/Oslo")
NOW = datetime(2021, 1, 1, tzinfo=timezone.utc)


def log(log_id, day, start, end, asleep=400, main=True, **extra):
    minutes = int((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds() // 60)
    entry = {"logId": log_id, "dateOfSleep": day, "startTime": start.replace("T", " "),
             "endTime": end + ".000", "minutesAsleep": min(asleep, minutes), "minutesAwake": 20,
             "timeInBed": minutes, "efficiency": 93, "mainSleep": main, "type": "stages",
             "levels": {"summary": {"deep": {"minutes": 60, "thirtyDayAvgMinutes": 0}},
                        "data": [{"dateTime": start, "level": "wake", "seconds": 30}]}}
    entry.update(extra)
    return entry


NIGHTS = [log(1, "2019-11-02", "2019-11-01T23:10:00", "2019-11-02T07:19:30"),
          log(2, "2019-11-03", "2019-11-02T23:40:00", "2019-11-03T06:10:00", asleep=350),
          log(3, "2019-11-03", "2019-11-03T14:00:00", "2019-11-03T14:40:00", asleep=35, main=False),
          log(4, "2019-07-01", "2019-06-30T23:00:00", "2019-07-01T07:00:00", asleep=430)]


@pytest.fixture
def db(tmp_path):
    conn = tables.connect(tmp_path / "data" / "records.sqlite")
    yield conn
    conn.close()


def write(path: Path, data) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def rows(db, table="sleep_nights"):
    return db.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()


def test_fitbit_file_import_is_idempotent_and_keeps_naps_flagged(db, tmp_path):
    f = write(tmp_path / "sleep-2019-11-01.json", NIGHTS)
    first = sleep.import_sleep(db, "ann", f, OSLO, "Europe/Oslo", now=NOW)
    assert (first.nights, first.naps, first.new, first.unchanged) == (3, 1, 4, 0)
    again = sleep.import_sleep(db, "ann", f, OSLO, "Europe/Oslo", now=NOW)
    assert (again.new, again.updated, again.unchanged) == (0, 0, 4)
    stored = {r[1]: r for r in rows(db)}
    assert len(stored) == 4
    assert stored["3"][11] == 0 and stored["1"][11] == 1  # main_sleep flag
    assert json.loads(stored["1"][15])["levels"] == {"summary": NIGHTS[0]["levels"]["summary"]}  # no timeline
    # local wall time kept as exported; UTC through the zone's rules for that date (CET +1, CEST +2)
    assert stored["1"][4] == "2019-11-02 07:19:30" and stored["1"][5] == "2019-11-02T06:19:30.000Z"
    assert stored["4"][5] == "2019-07-01T05:00:00.000Z"
    assert oct(os.stat(tmp_path / "data" / "records.sqlite").st_mode & 0o777) == "0o600"


def test_a_changed_log_replaces_the_stored_one(db, tmp_path):
    sleep.import_sleep(db, "ann", write(tmp_path / "a.json", NIGHTS), OSLO, "Europe/Oslo", now=NOW)
    edited = [dict(NIGHTS[0], minutesAsleep=300)]
    summary = sleep.import_sleep(db, "ann", write(tmp_path / "b.json", edited), OSLO, "Europe/Oslo", now=NOW)
    assert (summary.updated, summary.new) == (1, 0)
    assert db.execute("SELECT minutes_asleep FROM sleep_nights WHERE log_id='1'").fetchone() == (300,)


def test_folder_merges_the_night_repeated_at_a_30_day_boundary(db, tmp_path):
    folder = tmp_path / "Sleep"
    folder.mkdir()
    repeat = json.loads(json.dumps(NIGHTS[1]))
    repeat["levels"]["summary"]["deep"]["thirtyDayAvgMinutes"] = 41  # only the 30-day average differs
    write(folder / "sleep-2019-10-04.json", NIGHTS[:2])
    write(folder / "sleep-2019-11-03.json", [repeat, NIGHTS[2]])
    write(folder / "sleep_score.csv", "not,read\n")
    summary = sleep.import_sleep(db, "ann", folder, OSLO, "Europe/Oslo", now=NOW)
    assert (summary.merged_repeats, summary.nights, summary.naps, len(summary.files)) == (1, 2, 1, 2)
    assert json.loads(db.execute("SELECT record FROM sleep_nights WHERE log_id='2'").fetchone()[0])[
        "levels"]["summary"]["deep"]["thirtyDayAvgMinutes"] == 41


def test_csv_import(db, tmp_path):
    f = write(tmp_path / "oura.csv", "date,minutes_asleep,efficiency,end_time\n2020-01-02,412,91,07:05\n"
                                     "2020-01-03,355,,\n")
    summary = sleep.import_sleep(db, "bob", f, OSLO, "Europe/Oslo", now=NOW)
    assert (summary.nights, summary.new) == (2, 2)
    got = db.execute("SELECT log_id, minutes_asleep, efficiency, end_local, end_utc, source FROM sleep_nights "
                     "ORDER BY log_id").fetchall()
    assert got == [("csv-2020-01-02", 412, 91.0, "2020-01-02 07:05:00", "2020-01-02T06:05:00.000Z", "csv"),
                   ("csv-2020-01-03", 355, None, None, None, "csv")]


def _overlapping():
    return NIGHTS[:1] + [log(9, "2019-11-02", "2019-11-02T06:00:00", "2019-11-02T09:00:00", asleep=100)]


def _conflicting_repeat():
    return NIGHTS[:2] + [dict(NIGHTS[1], minutesAsleep=200)]


BAD_JSON = [
    ("malformed", '[{"logId": 1, ', "not valid JSON"),
    ("empty", "", "the file is empty"),
    ("empty array", [], "no sleep logs"),
    ("not an array", {"logId": 1}, "expected a JSON array"),
    ("missing field", [NIGHTS[0], {k: v for k, v in NIGHTS[1].items() if k != "minutesAsleep"}],
     "record 1 (logId 2): missing field(s) minutesAsleep"),
    ("overlap", _overlapping(), "record 1 (logId 9): overlaps"),
    ("future", NIGHTS[:1] + [log(5, "2021-03-02", "2021-03-01T23:00:00", "2021-03-02T07:00:00")],
     "record 1 (logId 5): the night of 2021-03-02"),
    ("end before start", [dict(NIGHTS[0], endTime="2019-11-01T22:00:00.000")], "is not after startTime"),
    ("asleep > in bed", [dict(NIGHTS[0], minutesAsleep=999)], "minutesAsleep 999 is more than timeInBed"),
    ("bad number", [dict(NIGHTS[0], efficiency="high")], "efficiency must be a number"),
    ("bad date", [dict(NIGHTS[0], dateOfSleep="02/11/2019")], "dateOfSleep must be a date"),
    ("zoned time", [dict(NIGHTS[0], endTime="2019-11-02T07:19:30+01:00")], "carries a zone"),
    ("conflicting repeat", _conflicting_repeat(), "logId 2 also at"),
]


@pytest.mark.parametrize("content, message", [b[1:] for b in BAD_JSON], ids=[b[0] for b in BAD_JSON])
def test_bad_fitbit_files_are_rejected_whole(db, tmp_path, content, message):
    f = write(tmp_path / "sleep-bad.json", content)
    with pytest.raises(ImportDataError) as err:
        sleep.import_sleep(db, "ann", f, OSLO, "Europe/Oslo", now=NOW)
    assert str(f) in str(err.value) and message in str(err.value)
    assert rows(db) == []  # nothing half-imported


def test_overlap_with_a_stored_night_is_rejected(db, tmp_path):
    sleep.import_sleep(db, "ann", write(tmp_path / "a.json", NIGHTS[:1]), OSLO, "Europe/Oslo", now=NOW)
    other = [NIGHTS[1], log(7, "2019-11-02", "2019-11-02T01:00:00", "2019-11-02T08:00:00")]
    with pytest.raises(ImportDataError, match=r"record 1 \(logId 7\): overlaps the stored night 1"):
        sleep.import_sleep(db, "ann", write(tmp_path / "b.json", other), OSLO, "Europe/Oslo", now=NOW)
    assert [r[1] for r in rows(db)] == ["1"]
    # another person's nights never conflict
    sleep.import_sleep(db, "bob", write(tmp_path / "b.json", other), OSLO, "Europe/Oslo", now=NOW)
    csv = write(tmp_path / "c.csv", "date,minutes_asleep\n2019-11-02,300\n")
    with pytest.raises(ImportDataError, match="line 2: overlaps the stored night 1"):
        sleep.import_sleep(db, "ann", csv, OSLO, "Europe/Oslo", now=NOW)


@pytest.mark.parametrize("content, message", [
    ("date,minutes\n2020-01-01,300\n", "header must name date and minutes_asleep"),
    ("date,minutes_asleep\n", "a header but no nights"),
    ("date,minutes_asleep\n2020-01-01,300\n2020-01-01,310\n", "line 3: date 2020-01-01 already given on line 2"),
    ("date,minutes_asleep\n2020-01-01,lots\n", "line 2: minutes_asleep must be a number"),
    ("date,minutes_asleep\n2020-01-01,2000\n", "line 2: minutes_asleep must be between 0 and 1440"),
    ("date,minutes_asleep\n2020-01-01,300,9\n", "line 2: more values than the header"),
    ("date,minutes_asleep\n2099-01-01,300\n", "line 2: the night of 2099-01-01"),
])
def test_bad_csv_files_are_rejected_whole(db, tmp_path, content, message):
    f = write(tmp_path / "nights.csv", content)
    with pytest.raises(ImportDataError, match=message):
        sleep.import_sleep(db, "ann", f, OSLO, "Europe/Oslo", now=NOW)
    assert rows(db) == []


WELLNESS = ("effective_time_frame,fatigue,mood,readiness,sleep_duration_h,sleep_quality,soreness,soreness_area,"
            "stress\n2019-11-01T08:31:40.751Z,2,3,5,6,3,2,[12921003],3\n"
            '2019-11-02T23:30:00.000Z,2,4,6,6,3,2,"[1, 2]",3\n'
            "2019-11-04T07:05:28.429Z,0,0,0,0,0,0,[],0\n")


def test_mood_import_reads_zero_as_unanswered_and_is_idempotent(db, tmp_path):
    f = write(tmp_path / "wellness.csv", WELLNESS)
    summary = mood.import_mood(db, "ann", f, OSLO, "Europe/Oslo", now=NOW)
    assert (summary.reports, summary.unanswered, summary.new) == (3, 1, 3)
    assert mood.import_mood(db, "ann", f, OSLO, "Europe/Oslo", now=NOW).unchanged == 3
    got = db.execute("SELECT timestamp, mood FROM mood_reports ORDER BY timestamp").fetchall()
    assert got == [("2019-11-01T08:31:40.751Z", 3.0), ("2019-11-02T23:30:00.000Z", 4.0),
                   ("2019-11-04T07:05:28.429Z", None)]


def test_mood_without_zone_is_read_in_the_given_zone(db, tmp_path):
    f = write(tmp_path / "m.csv", "timestamp,mood\n2019-07-01 08:00:00,4\n")
    mood.import_mood(db, "ann", f, OSLO, "Europe/Oslo", now=NOW)
    assert db.execute("SELECT timestamp FROM mood_reports").fetchone() == ("2019-07-01T06:00:00.000Z",)


@pytest.mark.parametrize("content, message", [
    ("", "the file is empty"),
    ("effective_time_frame,stress\n2019-11-01T08:00:00Z,3\n", "header must name a time stamp"),
    ("effective_time_frame,mood\n2019-11-01T08:00:00Z,3\n2019-11-02T08:00:00Z,7\n", "line 3: mood must be 1-5"),
    ("effective_time_frame,mood\n2019-11-01T08:00:00Z,good\n", "line 2: mood must be a number"),
    ("effective_time_frame,mood\nyesterday,3\n", "line 2: effective_time_frame is not an ISO 8601"),
    ("effective_time_frame,mood\n2099-11-01T08:00:00Z,3\n", "line 2: 2099-11-01T08:00:00Z is in the future"),
    ("effective_time_frame,mood\n2019-11-01T08:00:00Z,3\n2019-11-01T08:00:00Z,4\n", "line 3: time stamp"),
])
def test_bad_mood_files_are_rejected_whole(db, tmp_path, content, message):
    f = write(tmp_path / "wellness.csv", content)
    with pytest.raises(ImportDataError, match=message) as err:
        mood.import_mood(db, "ann", f, OSLO, "Europe/Oslo", now=NOW)
    assert str(f) in str(err.value)
    assert rows(db, "mood_reports") == []


def test_cli_exits_2_on_a_bad_file_and_names_it(tmp_path):
    bad = write(tmp_path / "sleep-x.json", '[{"logId": 1}')
    data = tmp_path / "data"
    proc = run_cli("sleep", "import", str(bad), "--user", "ann", "--set", f"device.data_dir={data}")
    assert proc.returncode == 2, proc.stderr
    assert f"emotion-edge: {bad}: not valid JSON" in proc.stderr
    good = write(tmp_path / "sleep-y.json", NIGHTS)
    proc = run_cli("sleep", "import", str(good), "--user", "ann", "--tz", "Europe/Oslo",
                   "--set", f"device.data_dir={data}")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["new"] == 4
    proc = run_cli("mood", "import", str(good), "--user", "ann", "--tz", "Mars/Olympus",
                   "--set", f"device.data_dir={data}")
    assert proc.returncode == 2 and "--tz: unknown time zone 'Mars/Olympus'" in proc.stderr
