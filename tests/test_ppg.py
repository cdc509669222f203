"""Analog PPG heart rate against HeartPy on the recordings that ship with it (test-only dependency)."""
from pathlib import Path

import numpy as np
import pytest

from pi.physiology.beat_rate import BeatRateEstimator
from pi.physiology.ppg import PpgBeatDetector, detect_beats


def recording(name: str):
    """(heartpy, signal, sample rate) of one of the recordings that ship with HeartPy; imported here, not at
    collection, because HeartPy brings SciPy and matplotlib (seconds of start-up)."""
    hp = pytest.importorskip("heartpy")
    path = Path(hp.__file__).parent / "data" / name
    if name == "data.csv":
        return hp, hp.get_data(str(path)), 100.0
    if name == "data2.csv":
        return hp, hp.get_data(str(path), column_name="hr"), hp.get_samplerate_mstimer(
            hp.get_data(str(path), column_name="timer"))
    stamps = hp.get_data(str(path), column_name="datetime")
    return hp, hp.get_data(str(path), column_name="hr"), hp.get_samplerate_datetime(
        stamps, timeformat="%Y-%m-%d %H:%M:%S.%f")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["data.csv", "data2.csv", "data3.csv"])
def test_streaming_ppg_bpm_within_3_of_heartpy(name):
    hp, signal, fs = recording(name)
    _, measures = hp.process(signal, fs)
    detector, estimator = PpgBeatDetector(fs), BeatRateEstimator(30, 220, window_s=1e9)
    for i, value in enumerate(signal):
        for beat in detector.feed(i / fs, float(value)):
            estimator.add_beat(beat)
    ours = estimator.rate(len(signal) / fs).bpm
    assert ours == pytest.approx(measures["bpm"], abs=3), (name, ours, measures["bpm"])


def test_batch_detector_finds_a_clean_synthetic_pulse():
    fs, bpm = 100.0, 72.0
    t = np.arange(0, 20, 1 / fs)
    phase = (t * bpm / 60) % 1
    signal = 500 + 200 * np.exp(-((phase - 0.2) ** 2) / 0.004) + 60 * np.exp(-((phase - 0.5) ** 2) / 0.01)
    beats = detect_beats(signal, fs)
    assert 60 / np.mean(np.diff(beats)) == pytest.approx(bpm, abs=0.5)
