"""Empatica E4 export folders -> labelled sessions in the local store, one session per labelled segment.

An E4 export is a folder of CSVs whose first row is the start (unix UTC) and second row the sample rate
(Hz); `IBI.csv` instead has `start, IBI` and then (seconds since start, interval s) rows. The import makes
the same per-second records the device collects, so `fit`, `feedback` and the dashboard work on them
unchanged:
- `skin_conductance`: mean EDA (µS) over the second; a sample under 0.02 µS means the electrodes were off;
- `bpm`: BVP (64 Hz) through the device's own PPG path (`pi.physiology.ppg.PpgBeatDetector` feeding
  `pi.physiology.beat_rate.BeatRateEstimator`, the `heart.source: ppg` chain), with its quality flag;
- `bpm_e4`: Empatica's own HR for that second, kept as a reference, never used by the model.
Every problem is an `E4ImportError` naming the file and line, and nothing is written unless the whole
folder imports (one SQLite transaction).
"""
from __future__ import annotations

import csv
import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pi.errors import EmotionEdgeError
from pi.messaging import messages
from pi.physiology.beat_rate import BeatRateEstimator
from pi.physiology.sampler import HeartInput, SecondRecord

CONTACT_MIN_US = 0.02  # the E4 reads ~0 µS with the electrodes off the skin
STRESS, REST = "stress", "rest"
STRESS_TASKS = ("stroop", "interview", "hyperventilation")


class E4ImportError(EmotionEdgeError):
    """A file of an E4 export or a segments file is missing or malformed; the message names file and line."""


@dataclass(frozen=True)
class Signal:
    """One E4 channel: start (unix UTC), rate (Hz) and the samples (rows x columns)."""

    path: Path
    start: float
    rate: float
    values: np.ndarray

    @property
    def end(self) -> float:
        return self.start + len(self.values) / self.rate


@dataclass(frozen=True)
class Segment:
    """A labelled stretch [start, end) in unix seconds; `line` is where it came from, for errors."""

    start: float
    end: float
    label: str
    task: str | None = None
    source: str = ""


@dataclass
class Recording:
    eda: Signal
    bvp: Signal
    hr: Signal | None
    ibi_times: np.ndarray  # unix time of each beat ending an interval
    ibi: np.ndarray  # interval durations, s
    folder: Path


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise E4ImportError(f"{path}: missing")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise E4ImportError(f"{path}: unreadable: {exc}") from None
    return text.splitlines()


def _number(path: Path, line_no: int, text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise E4ImportError(f"{path}, line {line_no}: {what}, got {text.strip()[:40]!r}") from None
    if not np.isfinite(value):
        raise E4ImportError(f"{path}, line {line_no}: not a finite number ({what})")
    return value


def _start(path: Path, lines: list[str], columns: int) -> float:
    if not lines:
        raise E4ImportError(f"{path}, line 1: empty file (expected the start time, unix UTC)")
    cells = lines[0].split(",")
    if len(cells) != columns:
        raise E4ImportError(f"{path}, line 1: wrong header: expected {columns} start time(s), got {lines[0][:60]!r}")
    starts = {_number(path, 1, c, "wrong header: expected the start time (unix UTC)") for c in cells}
    start = starts.pop()
    if starts or not 1e9 <= start <= 1e10:
        raise E4ImportError(f"{path}, line 1: wrong header: {lines[0][:60]!r} is not one unix start time")
    return start


def read_signal(path: Path, columns: int = 1) -> Signal:
    """An E4 channel file: start row, rate row, then one sample (of `columns` values) a row."""
    lines = _lines(path)
    start = _start(path, lines, columns)
    if len(lines) < 2:
        raise E4ImportError(f"{path}, line 2: truncated: no sample-rate row")
    rates = {_number(path, 2, c, "wrong header: expected the sample rate (Hz)") for c in lines[1].split(",")}
    rate = rates.pop()
    if rates or len(lines[1].split(",")) != columns or not 0 < rate <= 10000:
        raise E4ImportError(f"{path}, line 2: wrong header: {lines[1][:60]!r} is not one positive sample rate")
    body = [ln for ln in lines[2:]]
    while body and not body[-1].strip():
        body.pop()
    if not body:
        raise E4ImportError(f"{path}, line 3: truncated: no samples after the header")
    try:
        values = np.array([ln.split(",") for ln in body], dtype=float)
        if values.ndim != 2 or values.shape[1] != columns or not np.isfinite(values).all():
            raise ValueError
    except ValueError:
        for i, ln in enumerate(body):
            cells = ln.split(",")
            if len(cells) != columns:
                raise E4ImportError(f"{path}, line {i + 3}: expected {columns} value(s), got {ln[:60]!r}"
                                    + (" (truncated file?)" if i == len(body) - 1 else "")) from None
            for c in cells:
                _number(path, i + 3, c, "expected a sample")
        raise
    return Signal(path, start, rate, values)


def read_ibi(path: Path) -> tuple[float, np.ndarray, np.ndarray]:
    """IBI.csv: `start, IBI`, then (seconds since start, interval) rows, times strictly increasing."""
    lines = _lines(path)
    if not lines or len(lines[0].split(",")) != 2 or lines[0].split(",")[1].strip() != "IBI":
        raise E4ImportError(f"{path}, line 1: wrong header: expected 'START, IBI', got {(lines or [''])[0][:60]!r}")
    start = _start(path, [lines[0].split(",")[0]], 1)
    times: list[float] = []
    intervals: list[float] = []
    for i, ln in enumerate(lines[1:], start=2):
        if not ln.strip():
            continue
        cells = ln.split(",")
        if len(cells) != 2:
            raise E4ImportError(f"{path}, line {i}: expected 'time, interval', got {ln[:60]!r}")
        t = _number(path, i, cells[0], "expected a time (s)")
        iv = _number(path, i, cells[1], "expected an interval (s)")
        if times and t <= times[-1]:
            raise E4ImportError(f"{path}, line {i}: time {t} does not increase (previous {times[-1]})")
        if not 0 < iv < 5:
            raise E4ImportError(f"{path}, line {i}: interval {iv} s is not a heartbeat")
        times.append(t)
        intervals.append(iv)
    return start, start + np.array(times), np.array(intervals)


def read_recording(folder: str | Path) -> Recording:
    """Read and cross-check EDA, BVP, HR (optional) and IBI (optional) of one E4 export folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise E4ImportError(f"{folder}: not a folder")
    eda = read_signal(folder / "EDA.csv")
    bvp = read_signal(folder / "BVP.csv")
    hr = read_signal(folder / "HR.csv") if (folder / "HR.csv").exists() else None
    if (folder / "IBI.csv").exists():
        _, ibi_times, ibi = read_ibi(folder / "IBI.csv")
    else:
        ibi_times, ibi = np.empty(0), np.empty(0)
    for sig in (bvp, hr):
        if sig is None:
            continue
        if abs(sig.start - eda.start) > 60:
            raise E4ImportError(f"{sig.path}, line 1: starts {sig.start - eda.start:+.0f} s from {eda.path.name}: "
                                "not the same recording")
        if sig.end < eda.end - 30:  # the E4 writes every channel to the end of the session
            raise E4ImportError(f"{sig.path}, line {len(sig.values) + 2}: truncated: ends {eda.end - sig.end:.0f} s "
                                f"before {eda.path.name}")
    return Recording(eda, bvp, hr, ibi_times, ibi, folder)


def per_second(rec: Recording) -> dict[str, np.ndarray]:
    """Per-second arrays over the whole recording: end time (unix), conductance, BPM, quality and contact.

    The BVP goes through the device's PPG chain sample by sample, so an imported second's `bpm` and
    `hr_quality` are what the device would have computed with a PPG sensor on that wrist.
    """
    n = int(min(rec.eda.end, rec.bvp.end) - rec.eda.start)
    ends = rec.eda.start + np.arange(1, n + 1)
    eda = rec.eda.values[:, 0]
    per = int(round(rec.eda.rate))
    eda = eda[:n * per].reshape(n, per) if per * n <= len(eda) else np.pad(eda, (0, n * per - len(eda)),
                                                                          constant_values=np.nan).reshape(n, per)
    on = eda >= CONTACT_MIN_US
    contact = on.mean(axis=1)
    scl = np.where(on.any(axis=1), np.where(on, eda, 0).sum(axis=1) / np.maximum(on.sum(axis=1), 1), np.nan)
    estimator = BeatRateEstimator(30, 220, 10)
    heart = HeartInput("ppg", estimator, rec.bvp.rate, 0, 0)
    bvp = rec.bvp.values[:, 0]
    bvp_t = rec.bvp.start + np.arange(len(bvp)) / rec.bvp.rate
    bpm, quality = np.full(n, np.nan), np.zeros(n)
    j = 0
    for k, end in enumerate(ends):
        while j < len(bvp) and bvp_t[j] < end:
            heart.feed(float(bvp_t[j]), float(bvp[j]))
            j += 1
        heart.commit()  # the sampler commits a second's beats at its end, as here
        rate = estimator.rate(float(end))
        if rate.bpm is not None:
            bpm[k], quality[k] = rate.bpm, rate.quality
    ref = np.full(n, np.nan)
    if rec.hr is not None:
        idx = np.floor(ends - 1 - rec.hr.start).astype(int)  # the HR row covering this second
        ok = (idx >= 0) & (idx < len(rec.hr.values))
        ref[ok] = rec.hr.values[idx[ok], 0]
    return {"end": ends, "scl": scl, "bpm": bpm, "hr_quality": quality, "contact": contact, "bpm_e4": ref}


def _parse_time(path: Path, line_no: int, text: str) -> float:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        stamp = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise E4ImportError(f"{path}, line {line_no}: {text[:40]!r} is neither unix seconds nor ISO 8601") from None
    if stamp.tzinfo is None:
        raise E4ImportError(f"{path}, line {line_no}: {text!r} has no time zone; write UTC as ...Z")
    return stamp.timestamp()


def read_segments(path: str | Path) -> list[Segment]:
    """A segments file: `start,end,label[,task]` rows (UTC ISO 8601 or unix seconds), optional header."""
    path = Path(path)
    segments = []
    for i, row in enumerate(csv.reader(_lines(path)), start=1):
        if not row or not "".join(row).strip() or (i == 1 and row[0].strip().lower() == "start"):
            continue
        if len(row) not in (3, 4):
            raise E4ImportError(f"{path}, line {i}: expected 'start,end,label', got {','.join(row)[:60]!r}")
        start, end = _parse_time(path, i, row[0]), _parse_time(path, i, row[1])
        label = row[2].strip()
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,31}", label):
            raise E4ImportError(f"{path}, line {i}: bad label {label!r}")
        if end <= start:
            raise E4ImportError(f"{path}, line {i}: end {row[1].strip()} is not after start {row[0].strip()}")
        task = row[3].strip() if len(row) == 4 and row[3].strip() else None
        segments.append(Segment(start, end, label, task, f"{path}, line {i}"))
    if not segments:
        raise E4ImportError(f"{path}: no segments")
    return segments


# Stress-Predict (Iqbal et al. 2022): the time-log columns, in order, after ID, start, end, session id.
_PHASES = ("consent", "baseline", "stroop", "relax", "interview", "relax", "hyperventilation", "relax",
           "questionnaire", "relax")


def _time_log(dataset: Path, subject: str) -> list[tuple[str, float, float]]:
    """The protocol phases of one participant as (name, start, end) unix UTC.

    The logs are Irish local time (GMT = UTC in February and March 2022) on a 12-hour clock without am/pm;
    the sessions ran 09:00-17:00, so an hour under 8 is afternoon.
    """
    path = dataset / "Processed_data" / "time_logs.csv"
    for i, row in enumerate(csv.reader(_lines(path)), start=1):
        if not row or row[0].strip() != subject:
            continue
        try:
            day = dt.datetime.strptime(row[-1].strip()[:10], "%Y-%m-%d").replace(tzinfo=dt.timezone.utc)

            def at(text: str, day: dt.datetime = day) -> float:
                h, m, s = (int(v) for v in text.split(":"))
                return (day + dt.timedelta(hours=h + (12 if h < 8 else 0), minutes=m, seconds=s)).timestamp()

            cells = row[4:4 + 2 * len(_PHASES)]
            return [(name, at(cells[2 * k]), at(cells[2 * k + 1])) for k, name in enumerate(_PHASES)]
        except (ValueError, IndexError):
            raise E4ImportError(f"{path}, line {i}: unreadable time-log row for {subject}") from None
    return []


def stress_predict_segments(folder: str | Path, recording: Recording | None = None) -> list[Segment]:
    """Segments of one Stress-Predict participant from the dataset's own labels (`DIR` = dataset/Raw_data/SXX).

    `labels_per_second.csv` (1 = stress task) gives the segments; the time logs name each one (the task
    with the largest overlap). Participant 1 has no label rows, so S01's come from its time log: the three
    tasks are stress and the stretches between them rest. With `recording`, segments are clipped to it
    (S01's log starts before the E4 was switched on; some label files run 1-2 s past the recording's end).
    """
    folder = Path(folder).resolve()
    m = re.fullmatch(r"S(\d+)", folder.name)
    dataset = folder.parent.parent
    path = dataset / "Processed_data" / "labels_per_second.csv"
    if m is None or folder.parent.name != "Raw_data":
        raise E4ImportError(f"{folder}: --stress-predict needs DIR = <dataset>/Raw_data/SXX")
    number = int(m.group(1))
    lines = _lines(path)
    header = lines[0].split(",") if lines else []
    if header[:1] != ["Participant"] or "Time(sec)" not in header or "Label" not in header:
        raise E4ImportError(f"{path}, line 1: wrong header {lines[0][:60] if lines else ''!r}")
    it, il = header.index("Time(sec)"), header.index("Label")
    seconds: list[tuple[float, int, int]] = []  # (unix time, label, line)
    for i, ln in enumerate(lines[1:], start=2):
        cells = ln.split(",")
        if cells[0] != str(number):
            continue
        if len(cells) != len(header):
            raise E4ImportError(f"{path}, line {i}: expected {len(header)} columns (truncated?)")
        t = _number(path, i, cells[it], "expected a unix time")
        flag = _number(path, i, cells[il], "expected a 0/1 label")
        if seconds and t <= seconds[-1][0]:
            raise E4ImportError(f"{path}, line {i}: time {cells[it]} does not increase")
        seconds.append((t, int(flag), i))
    phases = _time_log(dataset, folder.name)
    raw: list[tuple[float, float, str, str]] = []
    if seconds:
        for t, stress_flag, line in seconds:
            name = STRESS if stress_flag == 1 else REST
            if raw and raw[-1][2] == name and t == raw[-1][1]:
                raw[-1] = (raw[-1][0], t + 1, name, raw[-1][3])
            else:
                raw.append((t, t + 1, name, f"{path}, line {line}"))
    elif phases:
        tasks = sorted((s, e) for name, s, e in phases if name in STRESS_TASKS)
        lo, hi = phases[0][1], max(e for _, _, e in phases)
        edge = lo
        for s, e in tasks:
            if s > edge:
                raw.append((edge, s, REST, f"{dataset / 'Processed_data' / 'time_logs.csv'} ({folder.name})"))
            raw.append((s, e, STRESS, f"{dataset / 'Processed_data' / 'time_logs.csv'} ({folder.name})"))
            edge = e
        if hi > edge:
            raw.append((edge, hi, REST, f"{dataset / 'Processed_data' / 'time_logs.csv'} ({folder.name})"))
    else:
        raise E4ImportError(f"{path}: no labels for participant {number}, and no time-log row for {folder.name}")
    out = []
    for k, (s, e, label, source) in enumerate(raw):
        wanted = STRESS_TASKS if label == STRESS else ("consent", "baseline", "relax", "questionnaire")
        overlap = [(min(e, pe) - max(s, ps), name) for name, ps, pe in phases if name in wanted]
        best = max(overlap, default=(0.0, None))
        task = best[1] if best[0] > 0 else None
        if task in ("consent", "baseline") or (label == REST and k == 0):
            task = "baseline"
        if recording is not None:
            lo, hi = recording.eda.start, min(recording.eda.end, recording.bvp.end)
            if seconds and (s < lo - 60 or e > hi + 60):  # a few seconds over the ends happen in the dataset
                raise E4ImportError(f"{source}: label segment {s:.0f}-{e:.0f} lies outside the recording "
                                    f"{folder} ({lo:.0f}-{hi:.0f})")
            s, e = max(s, lo), min(e, hi)
            if e - s < 30:
                continue
        out.append(Segment(s, e, label, task, source))
    return out


def check_segments(segments: list[Segment], rec: Recording) -> None:
    """Segments must lie inside the recording and must not overlap."""
    ordered = sorted(segments, key=lambda s: s.start)
    for a, b in zip(ordered, ordered[1:]):
        if b.start < a.end:
            raise E4ImportError(f"{b.source}: segment {b.start:.0f}-{b.end:.0f} ({b.label}) overlaps "
                                f"{a.start:.0f}-{a.end:.0f} ({a.label}) from {a.source}")
    lo, hi = rec.eda.start, min(rec.eda.end, rec.bvp.end)
    for s in segments:
        if s.start < lo - 1 or s.end > hi + 1:
            raise E4ImportError(f"{s.source}: segment {s.start:.0f}-{s.end:.0f} ({s.label}) lies outside the "
                                f"recording {rec.folder} ({lo:.0f}-{hi:.0f})")


def session_records(rec: Recording, segments: Iterable[Segment], user: str,
                    device_id: str = "empatica-e4", seconds: dict | None = None) -> list[dict]:
    """Train records (the device's format) for every labelled segment, one session per segment."""
    segments = list(segments)
    check_segments(segments, rec)
    seconds = seconds or per_second(rec)
    out = []
    for k, seg in enumerate(sorted(segments, key=lambda s: s.start)):
        # the second ending at `end` covers (end-1, end]; it belongs to the segment if wholly inside
        inside = np.flatnonzero((seconds["end"] - 1 >= seg.start - 1e-6) & (seconds["end"] <= seg.end + 1e-6))
        session_id = f"{user}-e4-{int(rec.eda.start)}-{k:02d}-{seg.label}"
        for seq, i in enumerate(inside):
            scl, bpm = seconds["scl"][i], seconds["bpm"][i]
            second = SecondRecord(
                t=float(seconds["end"][i]), wall=float(seconds["end"][i]),
                skin_conductance=None if np.isnan(scl) else float(scl), bpm=None if np.isnan(bpm) else float(bpm),
                contact=float(seconds["contact"][i]), hr_quality=float(seconds["hr_quality"][i]),
                samples=int(round(rec.bvp.rate)), i2c_errors=0, late_ticks=0)
            record = messages.train_record(device_id, user, session_id, seq, seg.label, second)
            ref = seconds["bpm_e4"][i]
            record.update(bpm_e4=None if np.isnan(ref) else round(float(ref), 1), task=seg.task,
                          source="empatica-e4")
            out.append(record)
    return out


def import_recording(store, rec: Recording, user: str, segments: list[Segment]) -> dict:
    """Check, convert and store one E4 recording in one transaction; a summary of what was written."""
    records = session_records(rec, segments, user)
    store.add_records(records)
    sessions: dict[str, dict] = {}
    for r in records:
        s = sessions.setdefault(r["session_id"], {"session_id": r["session_id"], "label": r["mood"],
                                                  "task": r["task"], "seconds": 0})
        s["seconds"] += 1
    return {"user": user, "folder": str(rec.folder), "records": len(records), "sessions": list(sessions.values())}
