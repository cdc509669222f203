"""The sleep report: morning scores from the device's own results, figures checked against scipy and
statsmodels on the same data, plots, HTML, the MQTT summary, and the whole path on real PMData files."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from conftest import ROOT, SHARED, needs_shared, run_cli

from pi.ingest import sleep, tables
from pi.reports import sleep as rs

EXTRA_MISSING = "the report extra is not installed: pip install -e .[report]"


@pytest.fixture(scope="module")
def stats():
    """scipy.stats, imported when a test needs it (statsmodels and SciPy take seconds to import)."""
    return pytest.importorskip("scipy.stats", reason=EXTRA_MISSING)


@pytest.fixture(scope="module")
def sm():
    return pytest.importorskip("statsmodels.api", reason=EXTRA_MISSING)

PMDATA = SHARED / "datasets" / "pmdata"
OSLO = ZoneInfo("Europe/Oslo")


def synthetic_pairs(seed=1, users=4, nights=30):
    rng = np.random.default_rng(seed)
    pairs = []
    for u in range(users):
        offset = rng.normal(0, 0.8)
        for d in range(nights):
            hours = float(np.clip(rng.normal(6.6, 1.2), 2, 11))
            score = float(3 + offset + 0.15 * (hours - 6.6) + rng.normal(0, 0.6))
            pairs.append(rs.Pair(f"u{u}", date(2020, 1, 1) + timedelta(days=d), hours, score, 1, None))
    return pairs


def test_statistics_match_scipy_and_statsmodels(stats, sm):
    pairs = synthetic_pairs()
    out = rs.statistics(pairs)
    x = np.array([p.hours for p in pairs])
    y = np.array([p.score for p in pairs])
    users = np.array([p.user for p in pairs])
    assert out["n"] == len(pairs) == 120
    pr = stats.pearsonr(x, y)
    assert out["pearson_r"] == pytest.approx(pr.statistic, abs=1e-12)
    assert out["pearson_p"] == pytest.approx(pr.pvalue, rel=1e-9)
    ci = pr.confidence_interval(0.95)
    assert out["pearson_ci"] == pytest.approx([ci.low, ci.high], abs=1e-12)
    assert out["spearman_r"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    ols = sm.OLS(y, sm.add_constant(x)).fit()
    assert out["slope_per_hour"] == pytest.approx(stats.linregress(x, y).slope, abs=1e-12)
    assert out["slope_per_hour"] == pytest.approx(ols.params[1], abs=1e-10)
    assert out["slope_ci"] == pytest.approx(list(ols.conf_int()[1]), abs=1e-10)
    # within-person: Pearson of deviations from each person's means; its test is the fixed-effects OLS's
    dx, dy = x.copy(), y.copy()
    for u in set(users):
        dx[users == u] -= x[users == u].mean()
        dy[users == u] -= y[users == u].mean()
    assert out["within_person_r"] == pytest.approx(stats.pearsonr(dx, dy).statistic, abs=1e-12)
    dummies = (users[:, None] == np.unique(users)[None, :]).astype(float)
    fe = sm.OLS(y, np.column_stack([x, dummies])).fit()
    assert out["within_person_df"] == fe.df_resid == len(x) - 4 - 1
    assert out["within_person_p"] == pytest.approx(fe.pvalues[0], rel=1e-8)
    assert out["within_person_slope"] == pytest.approx(fe.params[0], abs=1e-10)
    lo, hi = out["within_person_ci"]
    assert lo < out["within_person_r"] < hi
    mixed = sm.MixedLM(y, sm.add_constant(x), groups=users).fit(reml=True)
    assert out["mixed_model"]["slope_per_hour"] == pytest.approx(mixed.fe_params[1], abs=1e-10)
    assert out["mixed_model"]["slope_ci"] == pytest.approx(list(np.asarray(mixed.conf_int())[1]), abs=1e-10)
    assert out["mixed_model"]["converged"] is True
    short, long_ = y[x < 6], y[x > 7]
    tt = stats.ttest_ind(long_, short, equal_var=False)
    assert (out["short_n"], out["long_n"]) == (len(short), len(long_))
    assert out["short_mean"] == pytest.approx(short.mean()) and out["long_mean"] == pytest.approx(long_.mean())
    assert out["long_minus_short_ci"] == pytest.approx(list(tt.confidence_interval(0.95)), abs=1e-12)
    assert out["long_minus_short_p"] == pytest.approx(tt.pvalue, rel=1e-9)


def test_one_person_has_no_within_person_figures_and_few_nights_no_statistics():
    pairs = synthetic_pairs(users=1)
    out = rs.statistics(pairs)
    assert out["within_person_r"] is None and out["mixed_model"] is None and out["pearson_r"] is not None
    few = rs.statistics(pairs[:2])
    assert few["n"] == 2 and few["pearson_r"] is None and "at least 3" in few["notes"][0]


def test_fit_band_matches_statsmodels_prediction(sm):
    pairs = synthetic_pairs(seed=3, users=1, nights=40)
    x = np.array([p.hours for p in pairs])
    y = np.array([p.score for p in pairs])
    grid = np.linspace(3, 10, 15)
    fit, lo, hi = rs.fit_band(x, y, grid)
    pred = sm.OLS(y, sm.add_constant(x)).fit().get_prediction(sm.add_constant(grid)).conf_int(alpha=0.05)
    assert lo == pytest.approx(pred[:, 0], abs=1e-10) and hi == pytest.approx(pred[:, 1], abs=1e-10)


def _store_module():
    from pi.service.store import LocalStore

    return LocalStore


def _result(request_id, user, when: datetime, **p):
    probs = {f"p_{e}": p.get(e) for e in ("happy", "sad", "angry", "neutral")}
    return {"request_id": request_id, "user": user, "timestamp": tables.iso_utc(when), **probs}


def test_device_morning_score_window_valence_and_missing_days(tmp_path):
    data = tmp_path / "data"
    store = _store_module()(data / "records.sqlite")
    db = tables.connect(data / "records.sqlite")
    nights = [{"logId": i, "dateOfSleep": f"2020-03-0{i}", "startTime": f"2020-03-0{i - 1} 23:00:00",
               "endTime": f"2020-03-0{i}T07:00:00.000", "minutesAsleep": m, "minutesAwake": 30, "timeInBed": 480,
               "efficiency": 90, "mainSleep": True} for i, m in ((2, 300), (3, 420), (4, 450), (5, 360))]
    (tmp_path / "s.json").write_text(json.dumps(nights))
    sleep.import_sleep(db, "ann", tmp_path / "s.json", OSLO, "Europe/Oslo")
    wake = datetime(2020, 3, 2, 6, 0, tzinfo=timezone.utc)  # 07:00 in Oslo (CET)
    results = [
        _result("before", "ann", wake - timedelta(seconds=1), happy=1.0, sad=0, angry=0, neutral=0),
        _result("a", "ann", wake, happy=0.6, sad=0.1, angry=0.1, neutral=0.2),
        _result("b", "ann", wake + timedelta(hours=2, minutes=59), happy=0.1, sad=0.5, angry=0.2, neutral=0.2),
        _result("unknown", "ann", wake + timedelta(hours=1)),  # no distribution: not counted
        _result("after", "ann", wake + timedelta(hours=3), happy=0, sad=1.0, angry=0, neutral=0),
        _result("bob", "bob", wake + timedelta(hours=1), happy=0, sad=1.0, angry=0, neutral=0),
        _result("c", "ann", wake + timedelta(days=1, minutes=5), happy=0.2, sad=0.2, angry=0.1, neutral=0.5),
        _result("d", "ann", wake + timedelta(days=2, minutes=5), happy=0.7, sad=0.1, angry=0.0, neutral=0.2),
        _result("e", "ann", wake + timedelta(days=3, minutes=5), happy=0.1, sad=0.3, angry=0.3, neutral=0.3),
    ]
    for r in results:
        store.add_detection({}, r)
    store.add_detection({}, dict(_result("z", "ann", wake + timedelta(days=3, hours=1)), p_happy=0.5, p_sad=0.5))
    pairs, counts = rs.pair_nights(db, ["ann"], "device", morning_hours=3.0)
    by_day = {p.date: p for p in pairs}
    assert by_day[date(2020, 3, 2)].count == 2  # the window is [wake, wake + 3 h)
    assert by_day[date(2020, 3, 2)].score == pytest.approx(((0.6 - 0.2) + (0.1 - 0.7)) / 2)
    assert by_day[date(2020, 3, 3)].score == pytest.approx(0.2 - 0.3)
    assert by_day[date(2020, 3, 5)].count == 2
    assert by_day[date(2020, 3, 2)].hours == 5.0
    assert counts == {"nights": 4, "naps_left_out": 0, "nights_without_score": 0, "nights_without_wake_time": 0}
    # a morning without a result is missing, not zero
    db.execute("DELETE FROM detections WHERE request_id IN ('d')")
    pairs, counts = rs.pair_nights(db, ["ann"], "device")
    assert date(2020, 3, 4) not in {p.date for p in pairs} and counts["nights_without_score"] == 1
    assert rs.valence({"p_happy": 0.5, "p_fear": 0.25, "p_surprise": 0.25}) == pytest.approx(0.25)
    store.close()
    db.close()


def _write_nights(tmp_path, rng, user, n=40):
    start = date(2020, 1, 1)
    logs = []
    for i in range(n):
        day = start + timedelta(days=i)
        minutes = int(rng.integers(240, 600))
        end = datetime.combine(day, datetime.min.time()) + timedelta(hours=7)
        logs.append({"logId": f"{user}-{i}", "dateOfSleep": day.isoformat(),
                     "startTime": (end - timedelta(minutes=minutes + 20)).strftime("%Y-%m-%d %H:%M:%S"),
                     "endTime": end.strftime("%Y-%m-%dT%H:%M:%S.000"), "minutesAsleep": minutes, "minutesAwake": 20,
                     "timeInBed": minutes + 20, "efficiency": 95, "mainSleep": True})
    (tmp_path / f"{user}.json").write_text(json.dumps(logs))
    rows = ["effective_time_frame,mood"] + [
        f"{(start + timedelta(days=i)).isoformat()}T08:00:00.000Z,{int(rng.integers(1, 6))}" for i in range(n) if i % 7]
    (tmp_path / f"{user}.csv").write_text("\n".join(rows) + "\n")


def test_cli_report_json_html_pngs_and_published_summary(tmp_path, broker, recorder):
    data = tmp_path / "data"
    rng = np.random.default_rng(5)
    common = ["--set", f"device.data_dir={data}", "--set", "sleep.timezone=Europe/Oslo",
              "--set", f"mqtt.port={broker.port}", "--set", "device.id=pi-test", "--set", "mqtt.publish_timeout=10"]
    for user in ("ann", "bob"):
        _write_nights(tmp_path, rng, user)
        assert run_cli("sleep", "import", str(tmp_path / f"{user}.json"), "--user", user, *common).returncode == 0
        assert run_cli("mood", "import", str(tmp_path / f"{user}.csv"), "--user", user, *common).returncode == 0
    rec = recorder(["iotsensors/pi-test/report"])
    proc = run_cli("sleep", "report", "--user", "ann", "--user", "bob", "--mood", "self", "--json", "--publish",
                   "--html", str(tmp_path / "out" / "report.html"), "--plots", str(tmp_path / "out"),
                   "--to", "2020-02-05", *common, timeout=180)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    for key in ("n", "pearson_r", "pearson_p", "pearson_ci", "spearman_r", "slope_per_hour", "slope_ci",
                "within_person_r", "short_mean", "long_mean"):
        assert key in report
    assert report["n"] == 2 * sum(1 for i in range(36) if i % 7)  # nights to Feb 5 with a report (not every 7th)
    assert report["within_person_r"] is not None and report["mixed_model"] is not None
    assert report["waiting_in_outbox"] == 0
    assert rec.wait_for(lambda: rec.on("iotsensors/pi-test/report"), 10)
    msg = rec.on("iotsensors/pi-test/report")[0]
    assert msg["type"] == "report" and msg["n"] == report["n"] and msg["pearson_r"] == report["pearson_r"]
    assert msg["users"] == "ann,bob" and msg["msg_id"].startswith("pi-test/report/")
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and html.count("data:image/png;base64,") == 2
    for name in ("sleep_scatter.png", "sleep_timeline.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (tmp_path / "out" / name).stat().st_mode & 0o077 == 0  # health data: private
    proc = run_cli("sleep", "report", "--user", "all", "--mood", "self", "--json", *common)
    assert json.loads(proc.stdout)["users"] == ["ann", "bob"]
    proc = run_cli("sleep", "report", "--user", "carol", *common)
    assert proc.returncode == 2 and "no imported nights for carol" in proc.stderr


def test_daemon_modules_do_not_import_the_report_extra_and_its_absence_is_named(tmp_path):
    probe = ("import sys; import pi.service.cli, pi.service.daemon, pi.reports.cli, pi.ingest.sleep, pi.ingest.mood; "
             "print([m for m in ('scipy', 'statsmodels', 'matplotlib') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr
    rng = np.random.default_rng(0)
    _write_nights(tmp_path, rng, "ann", 5)
    data = tmp_path / "data"
    assert run_cli("sleep", "import", str(tmp_path / "ann.json"), "--user", "ann",
                   "--set", f"device.data_dir={data}").returncode == 0
    blocked = ("import sys; sys.modules['scipy'] = None; sys.modules['scipy.stats'] = None; "
               "from pi.service.cli import main; sys.exit(main(sys.argv[1:]))")
    out = subprocess.run([sys.executable, "-c", blocked, "sleep", "report", "--user", "ann", "--set",
                          f"device.data_dir={data}"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "pip install 'emotion-edge[report]'" in out.stderr


def test_report_topic_follows_the_device_id():
    from pi.errors import ConfigError
    from pi.service import config

    assert config.load(None, ["device.id=pi-7"])["mqtt"]["report_topic"] == "iotsensors/pi-7/report"
    with pytest.raises(ConfigError, match="sleep.timezone"):
        config.load(None, ["sleep.timezone=Nowhere/Atlantis"])


@needs_shared(PMDATA / "p01")
def test_real_pmdata_person_whole_path(tmp_path, stats):
    """One person's real Fitbit export and wellness file through import and report; the pairs are rebuilt
    here straight from the raw files (by the Oslo date) and the figures compared with scipy."""
    person = PMDATA / "p01"
    data = tmp_path / "data"
    common = ["--set", f"device.data_dir={data}", "--set", "sleep.timezone=Europe/Oslo"]
    proc = run_cli("sleep", "import", str(person / "fitbit"), "--user", "p01", *common)
    assert proc.returncode == 0, proc.stderr
    imported = json.loads(proc.stdout)
    assert proc.returncode == 0 and run_cli("mood", "import", str(person / "pmsys" / "wellness.csv"), "--user",
                                            "p01", *common).returncode == 0
    proc = run_cli("sleep", "report", "--user", "p01", "--mood", "self", "--json",
                   "--html", str(tmp_path / "p01.html"), *common, timeout=180)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    logs = {r["logId"]: r for r in json.loads((person / "fitbit" / "sleep.json").read_text())}
    minutes: dict[str, int] = {}
    for r in logs.values():
        if r["mainSleep"]:
            minutes[r["dateOfSleep"]] = minutes.get(r["dateOfSleep"], 0) + r["minutesAsleep"]
    moods: dict[str, list] = {}
    for row in csv.DictReader((person / "pmsys" / "wellness.csv").open()):
        if int(row["mood"]) > 0:
            t = datetime.fromisoformat(row["effective_time_frame"].replace("Z", "+00:00")).astimezone(OSLO)
            moods.setdefault(t.date().isoformat(), []).append(int(row["mood"]))
    days = sorted(set(minutes) & set(moods))
    x = np.array([minutes[d] / 60 for d in days])
    y = np.array([np.mean(moods[d]) for d in days])
    assert imported["nights"] == len(minutes) and imported["merged_repeats"] > 0
    assert report["n"] == len(days) > 100
    assert report["pearson_r"] == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)
    assert report["slope_per_hour"] == pytest.approx(stats.linregress(x, y).slope, abs=1e-12)
    assert report["within_person_r"] is None
    assert "data:image/png;base64," in (tmp_path / "p01.html").read_text()
