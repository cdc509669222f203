"""The importer and the honest evaluation on the real Stress-Predict recordings in ../shared (read, never copied)."""
import json
import subprocess
import sys

import pytest
from conftest import ROOT, SHARED, SHARED_MISSING

from pi.ingest import e4

DATASET = SHARED / "datasets" / "stress-predict"
if not (DATASET / "Raw_data" / "S02" / "EDA.csv").exists():
    pytest.skip(SHARED_MISSING, allow_module_level=True)


@pytest.mark.slow
def test_a_participant_imports_as_seven_named_segments():
    folder = DATASET / "Raw_data" / "S02"
    rec = e4.read_recording(folder)
    segments = e4.stress_predict_segments(folder, rec)
    assert [s.label for s in segments] == ["rest", "stress"] * 3 + ["rest"]
    assert [s.task for s in segments if s.label == "stress"] == ["stroop", "interview", "hyperventilation"]
    assert segments[0].task == "baseline"
    records = e4.session_records(rec, segments, "s02")
    assert len({r["session_id"] for r in records}) == 7
    assert all(r["mood"] in ("rest", "stress") for r in records)


def test_s01_has_no_label_rows_so_its_time_log_labels_it():
    folder = DATASET / "Raw_data" / "S01"
    rec = e4.read_recording(folder)
    segments = e4.stress_predict_segments(folder, rec)
    assert [s.label for s in segments].count("stress") == 3
    assert segments[0].start >= rec.eda.start  # clipped to the recording


def _evaluate(*args, timeout=300):
    return subprocess.run([sys.executable, "scripts/eval_stress_predict.py", str(DATASET), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def small_prior(tmp_path_factory):
    """A population prior fitted on two people (the shipped one has 28: scoring one of them refits on 27)."""
    path = tmp_path_factory.mktemp("prior") / "prior.json"
    out = _evaluate("--subjects", "S02,S03", "--no-ppg", "--write-prior", str(path))
    assert out.returncode == 0, out.stderr
    assert json.loads(path.read_text())["subjects"] == ["S02", "S03"]
    return path


def test_the_evaluation_prints_the_three_figures_and_the_ppg_comparison(small_prior):
    out = _evaluate("--subjects", "S06", "--no-heartpy", "--json", "--prior", str(small_prior))
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    for key in ("mean_macro_f1_loso", "mean_macro_f1_random", "mean_macro_f1_majority", "ppg", "subjects"):
        assert key in d
    s = d["subjects"][0]
    assert s["segments"] == 7 and 0 <= s["macro_f1_majority"] < 0.5  # always "rest": F1 0 on stress
    assert s["prior"] == json.loads(small_prior.read_text())["source"]  # a new person: the prior as it is
    assert set(d["ppg"]) >= {"mae_bpm", "accepted_fraction", "heartpy_mae_bpm"}
    assert 0 < d["ppg"]["accepted_fraction"] <= 1


def test_a_person_the_prior_was_fitted_on_is_scored_with_a_prior_fitted_without_them(small_prior):
    out = _evaluate("--subjects", "S02", "--no-ppg", "--json", "--prior", str(small_prior))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["subjects"][0]["prior"] == "Stress-Predict without S02 (1 person)"
    alone = json.loads(_evaluate("--subjects", "S02", "--no-ppg", "--json", "--no-prior").stdout)
    assert alone["subjects"][0]["prior"] is None and alone["prior"] == "none"


def test_an_unknown_subject_is_named():
    out = _evaluate("--subjects", "S99", "--no-ppg")
    assert out.returncode == 2 and "S99" in out.stderr
