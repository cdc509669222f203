"""`emotion-edge import-e4`: Empatica E4 export folders -> labelled sessions; broken input is refused whole."""
import json
import sqlite3

import numpy as np
import pytest
from conftest import run_cli

from pi.personal.model import build_dataset
from pi.service.store import LocalStore

START = 1644227574.0


def pulse(t: np.ndarray, bpm: float) -> np.ndarray:
    """A wrist-PPG-like wave: a systolic peak and a smaller diastolic one per beat."""
    phase = (t * bpm / 60) % 1
    return 80 * np.exp(-((phase - 0.2) ** 2) / 0.004) + 25 * np.exp(-((phase - 0.5) ** 2) / 0.01) - 30


def write_e4(folder, seconds=240, bpm=72.0, eda_us=2.0):
    folder.mkdir(parents=True, exist_ok=True)
    t4 = np.arange(seconds * 4) / 4
    eda = "\n".join(f"{eda_us + 0.001 * v:.6f}" for v in t4)
    (folder / "EDA.csv").write_text(f"{START:.6f}\n4.000000\n" + eda + "\n")
    t64 = np.arange(seconds * 64) / 64
    (folder / "BVP.csv").write_text(f"{START:.2f}\n64.000000\n" + "\n".join(f"{v:.2f}" for v in pulse(t64, bpm)) + "\n")
    hr = "\n".join(f"{bpm:.2f}" for _ in range(seconds - 10))
    (folder / "HR.csv").write_text(f"{START + 10:.6f}\n1.000000\n" + hr + "\n")
    beats = np.arange(1, seconds * bpm / 60) * 60 / bpm
    (folder / "IBI.csv").write_text(f"{START:.6f}, IBI\n" + "\n".join(f"{b:.6f},{60 / bpm:.6f}" for b in beats) + "\n")
    return folder


def write_segments(path, rows):
    path.write_text("start,end,label\n" + "\n".join(",".join(str(v) for v in r) for r in rows) + "\n")
    return path


def iso(t):
    import datetime as dt
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat().replace("+00:00", "Z")


def test_a_folder_becomes_one_session_per_segment_in_the_device_format(tmp_path):
    folder = write_e4(tmp_path / "S99", bpm=72.0)
    labels = write_segments(tmp_path / "seg.csv", [(START + 10, START + 100, "rest"),
                                                   (iso(START + 100), iso(START + 230), "stress")])
    out = run_cli("import-e4", str(folder), "--user", "zoe", "--labels", str(labels),
                  "--set", f"device.data_dir={tmp_path / 'data'}")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert [s["label"] for s in summary["sessions"]] == ["rest", "stress"]
    assert [s["seconds"] for s in summary["sessions"]] == [90, 130]
    records = LocalStore(tmp_path / "data" / "records.sqlite").records("zoe")
    assert len(records) == 220
    r = records[50]
    for key in ("skin_conductance", "bpm", "quality", "hr_quality", "contact", "timestamp", "mood", "seq"):
        assert key in r
    assert r["source"] == "empatica-e4" and r["bpm_e4"] == 72.0
    rates = [x["bpm"] for x in records if x["bpm"] is not None]
    assert len(rates) > 0.9 * len(records) and abs(np.median(rates) - 72) < 2  # through the device's PPG chain
    assert build_dataset(records).classes == ["rest", "stress"]  # what `fit` consumes


@pytest.mark.parametrize("breakage,expect", [
    (lambda f: (f / "BVP.csv").unlink(), "BVP.csv: missing"),
    (lambda f: (f / "EDA.csv").write_text("hello\n4.0\n1.0\n"), "EDA.csv, line 1: wrong header"),
    (lambda f: (f / "EDA.csv").write_text(f"{START}\n0\n1.0\n"), "EDA.csv, line 2: wrong header"),
    (lambda f: (f / "EDA.csv").write_text(f"{START}\n4.0\n"), "EDA.csv, line 3: truncated"),
    (lambda f: (f / "BVP.csv").write_text((f / "BVP.csv").read_text()[:-40000]), "BVP.csv, line"),
    (lambda f: (f / "EDA.csv").write_text((f / "EDA.csv").read_text() + "0.5,\n"), "EDA.csv, line 963"),
    (lambda f: (f / "IBI.csv").write_text(f"{START}, IBI\n1.0,0.8\n0.5,0.8\n"),
     "IBI.csv, line 3: time 0.5 does not increase"),
])
def test_a_broken_folder_is_refused_naming_file_and_line_and_nothing_is_stored(tmp_path, breakage, expect):
    folder = write_e4(tmp_path / "S99")
    labels = write_segments(tmp_path / "seg.csv", [(START + 10, START + 100, "rest")])
    breakage(folder)
    data = tmp_path / "data"
    out = run_cli("import-e4", str(folder), "--user", "zoe", "--labels", str(labels),
                  "--set", f"device.data_dir={data}")
    assert out.returncode == 1
    assert expect in out.stderr, out.stderr
    db = data / "records.sqlite"
    assert not db.exists() or sqlite3.connect(db).execute("SELECT COUNT(*) FROM records").fetchone()[0] == 0


@pytest.mark.parametrize("rows,expect", [
    ([(START + 10, START + 100, "rest"), (START + 90, START + 200, "stress")], "seg.csv, line 3: segment"),
    ([(START + 10, START + 100, "rest"), (START + 200, START + 400, "stress")], "seg.csv, line 3: segment"),
    ([(START + 10, START + 5, "rest")], "seg.csv, line 2: end"),
    ([(START + 10, "2022-02-07 10:00", "rest")], "seg.csv, line 2"),
])
def test_bad_segments_are_refused_and_nothing_half_imported(tmp_path, rows, expect):
    folder = write_e4(tmp_path / "S99")
    labels = write_segments(tmp_path / "seg.csv", rows)
    data = tmp_path / "data"
    out = run_cli("import-e4", str(folder), "--user", "zoe", "--labels", str(labels),
                  "--set", f"device.data_dir={data}")
    assert out.returncode == 1 and expect in out.stderr, out.stderr
    db = data / "records.sqlite"
    assert not db.exists() or sqlite3.connect(db).execute("SELECT COUNT(*) FROM records").fetchone()[0] == 0


def test_a_failing_batch_rolls_back_what_it_wrote(tmp_path):
    store = LocalStore(tmp_path / "r.sqlite")
    good = {"session_id": "s", "seq": 0, "user": "u", "mood": "rest", "timestamp": "t", "skin_conductance": 1.0,
            "bpm": 60.0, "quality": "ok"}
    with pytest.raises(KeyError):
        store.add_records([good, {**good, "seq": 1}, {"session_id": "s"}])
    assert store.records() == []
