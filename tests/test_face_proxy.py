"""The face benchmarks: the proxy (scripts/bench_face_proxy.py), its geometry and its JSON, and the light
conditions (scripts/bench_face_light.py), framing and optics against the peer (scripts/bench_face_shift.py), on
the bundled face sample, the real cascades and the shipped model; no ../shared needed."""
from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import ROOT

from pi.resources import FACE_SAMPLE, shipped

sys.path.insert(0, str(ROOT / "scripts"))
from bench_face_light import conditions, squeeze  # noqa: E402
from bench_face_proxy import gap_interval, oracle_crop, render, same_crop, true_square  # noqa: E402

from pi.vision.face import FaceDetector  # noqa: E402
from pi.vision.fer import ExpressionClassifier  # noqa: E402
from pi.vision.registration import square_map  # noqa: E402


def test_the_true_square_cut_from_the_clean_face_is_the_face():
    face = np.load(shipped(FACE_SAMPLE))["images"][3]
    to_frame = np.array([[3.0, 0.0, 100.0], [0.0, 3.0, 50.0]])  # 3x, no turn: the frame spans 100..244 x 50..194
    # FaceDetector.cut's square centred at c covers the pixels whose centres average c - 0.5
    square = (100 + 3 * 23.5 + 0.5, 50 + 3 * 23.5 + 0.5, 144.0)
    np.testing.assert_allclose(square_map((*square, 0.0)) @ [23.5, 23.5, 1], [*to_frame @ [23.5, 23.5, 1], 1],
                               atol=1e-9)
    same = same_crop(face, to_frame, square, cv2.BORDER_REFLECT)
    assert np.abs(same.astype(int) - face).max() <= 1
    # a square twice the frame shows the face half as large, its surroundings reflected
    wide = same_crop(face, to_frame, (square[0], square[1], 288.0), cv2.BORDER_REFLECT)
    half = cv2.resize(face, (24, 24), interpolation=cv2.INTER_AREA)
    assert np.abs(wide[12:36, 12:36].astype(int) - half).mean() < 4


def test_same_crop_cuts_what_the_detector_cuts():
    """same_crop's pixel geometry against FaceDetector.cut itself, on a smooth image (no aliasing), for
    squares that cut takes without rounding its corner: equal, and half a crop pixel either way is not."""
    rng = np.random.default_rng(3)
    image = cv2.GaussianBlur(rng.uniform(0, 255, (240, 320)).astype(np.float32), (0, 0), 4)
    image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    identity = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    for cx, cy, side in ((160.0, 120.0, 48.0), (150.0, 100.0, 96.0), (121.0, 90.0, 96.0)):
        cut = FaceDetector().cut(image, (cx, cy, side, 0.0), 48).astype(float)
        same = same_crop(image, identity, (cx, cy, side), cv2.BORDER_REPLICATE)
        assert np.abs(cut - same).mean() < 0.5, (cx, cy, side)
        for dx in (-0.5, 0.5):
            off = same_crop(image, identity, (cx + dx * side / 48, cy, side), cv2.BORDER_REPLICATE)
            assert np.abs(cut - off).mean() > 1.0, (cx, cy, side, dx)


def test_the_gap_interval_needs_two_faces():
    assert gap_interval(np.array([True]), np.array([False]), 0) == [None, None]
    low, high = gap_interval(np.array([True] * 60 + [False] * 40), np.array([True] * 50 + [False] * 50), 0)
    assert low < 10 < high


def test_the_clean_canvas_maps_onto_the_rendered_frame():
    face = np.load(shipped(FACE_SAMPLE))["images"][5]
    frame, to_frame, side, angle, canvas, canvas_to_frame = render(face, np.random.default_rng(4))
    # the canvas's face frame (its middle 48 px) lands where to_frame puts the face
    np.testing.assert_allclose(canvas_to_frame @ [24.0, 24.0, 1.0], to_frame @ [0.0, 0.0, 1.0], atol=1e-6)
    assert canvas.shape == (96, 96) and frame.shape == (480, 640, 3) and 110 <= side <= 260 and abs(angle) <= 12


def test_the_true_square_cuts_the_face_as_the_oracle_does():
    """true_square (the rendered face's own frame, where the proxy measures the squares' offsets from) cut
    by FaceDetector.cut is the oracle's crop; the same square half a face pixel off is not."""
    face = cv2.GaussianBlur(np.load(shipped(FACE_SAMPLE))["images"][5], (0, 0), 1.0)
    detector = FaceDetector()
    for seed in range(4):  # scenes of different sizes and turns
        frame, to_frame, side, angle, _, _ = render(face, np.random.default_rng(seed))
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        oracle = oracle_crop(gray, to_frame, side).astype(float)
        cx, cy, s, turn = true_square(to_frame, side, angle)
        error = np.abs(detector.cut(gray, (cx, cy, s, turn), 48) - oracle).mean()  # two resamplings apart
        half = 0.5 * side / 48
        off = np.abs(detector.cut(gray, (cx + half, cy + half, s, turn), 48) - oracle).mean()
        assert error < 2.0 and off > 2 * error, (seed, error, off)


def test_the_benchmark_prints_its_figures_and_decomposition():
    pytest.importorskip("scipy", reason="the gap's interval is scipy's bootstrap (the report extra)")
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_face_proxy.py"), "--data",
                          str(shipped(FACE_SAMPLE)), "--n", "24", "--fer-model", "/nonexistent"],
                         capture_output=True, text=True, timeout=300, check=True)
    r = json.loads(out.stdout)
    assert r["n"] == 24 and 0 < r["detected"] <= 1
    d = r["decomposition"]
    for key in ("direct", "oracle", "pipeline", "same_crop_on_clean_face", "same_crop_on_clean_scene"):
        assert 0 <= d[key] <= 1
    assert d["pipeline"] == r["options"]["fer2013"]["accuracy"]
    assert d["direct"] == r["direct_on_found"]["accuracy"]
    assert sum(b["n"] for b in d["by_side_ratio"]) == round(r["detected"] * 24)
    for s in r["options"].values():
        low, high = s["gap_ci95_points"]
        assert low <= s["gap_to_direct_points"] <= high
    # the learned options run the registrar, turned or not, and report where their squares fall
    learned = {"learned (registrar's framing)", "learned+turn", "learned, averaged with its equalised view"}
    assert learned <= set(r["options"])
    geometry = r["geometry"]
    assert geometry["learned_side_over_true_side"] == geometry["learned+turn_side_over_true_side"]
    assert geometry["learned_abs_turn_left"] == geometry["abs_turn_left_without_alignment"]  # not turned
    assert geometry["learned+turn_abs_turn_left"] != geometry["learned_abs_turn_left"]


def test_light_conditions_do_what_they_say():
    faces = np.load(shipped(FACE_SAMPLE))["images"][:10]
    flat = squeeze(faces, 0.4)
    assert np.allclose(flat.mean(axis=(1, 2)), faces.mean(axis=(1, 2)), atol=1.0)
    assert np.allclose(flat.std(axis=(1, 2)), 0.4 * faces.std(axis=(1, 2)), atol=0.6)
    light = conditions(0)
    assert np.array_equal(light["as_is"](faces), faces)
    assert light["dim_0.35_noise_3"](faces).mean() < 0.4 * faces.mean() + 1
    assert light["washed_out_0.45"](faces).min() >= 255 - 0.45 * 255 - 1
    assert np.array_equal(light["dim_0.35_noise_3"](faces), conditions(0)["dim_0.35_noise_3"](faces))


def test_the_light_benchmark_scores_each_condition_and_view():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_face_light.py"), "--data",
                          str(shipped(FACE_SAMPLE))], capture_output=True, text=True, timeout=300, check=True)
    r = json.loads(out.stdout)
    sample = np.load(shipped(FACE_SAMPLE))
    classifier = ExpressionClassifier.from_metadata(ROOT / "models" / "fer_int8.tflite", ROOT / "models" / "fer.json")
    direct = float(np.mean(classifier.predict(sample["images"]).argmax(1) == sample["labels"]))
    assert r["n"] == len(sample["labels"]) and set(r["conditions"]) == set(conditions(0))
    assert abs(r["conditions"]["as_is"]["none"]["accuracy"] - direct) < 1e-3
    for row in r["conditions"].values():
        assert set(row) == {"none", "equalize", "clahe"}
        assert all(0 <= v["accuracy"] <= 1 for v in row.values())


def laplacian_energy(faces: np.ndarray) -> float:
    return float(np.mean([np.abs(cv2.Laplacian(f.astype(np.float32), cv2.CV_32F)).mean() for f in faces]))


def test_shift_conditions_do_what_they_say():
    from bench_face_shift import conditions as changes

    faces = np.load(shipped(FACE_SAMPLE))["images"][:10]
    change = changes()
    assert np.array_equal(change["clean"](faces), faces)
    for name, fn in change.items():
        out = fn(faces)
        assert out.shape == faces.shape and out.dtype == np.uint8, name
    yy, xx = np.mgrid[:48, :48]
    disc = np.where((yy - 23.5) ** 2 + (xx - 23.5) ** 2 < 8 ** 2, 255, 0).astype(np.uint8)[None]
    area = (disc > 127).sum()  # a centred disc grows with the zoom's square, about its centre
    assert (change["zoom_1.3 (tighter)"](disc) > 127).sum() == pytest.approx(1.3 ** 2 * area, rel=0.08)
    assert (change["zoom_0.8 (wider)"](disc) > 127).sum() == pytest.approx(0.8 ** 2 * area, rel=0.08)
    energy = laplacian_energy(faces)
    assert laplacian_energy(change["unsharp_1.0"](faces)) > 1.3 * energy
    assert laplacian_energy(change["blur_0.8px"](faces)) < 0.8 * energy
    assert laplacian_energy(change["bilateral (smooth skin)"](faces)) < energy


def test_lost_more_is_ours_minus_the_peers_loss_per_face():
    pytest.importorskip("scipy", reason="the interval is scipy's bootstrap (the report extra)")
    from bench_face_shift import lost_more

    ours = np.array([1, 1, 0, 0, 1, -1, 0, 1] * 60)
    peer = np.array([0, 1, 0, 0, 0, 0, 0, 1] * 60)
    r = lost_more(ours, peer, seed=0)
    assert r["shipped_lost_more_points"] == 12.5  # (1 + 1 - 1) / 8 faces
    low, high = r["shipped_lost_more_ci95_points"]
    assert low <= 12.5 <= high and low > 0


def test_the_shift_benchmark_scores_each_change():
    pytest.importorskip("scipy", reason="the loss's interval is scipy's bootstrap (the report extra)")
    from bench_face_shift import conditions as changes

    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_face_shift.py"), "--data",
                          str(shipped(FACE_SAMPLE)), "--fer-model", "/nonexistent"],
                         capture_output=True, text=True, timeout=300, check=True)
    r = json.loads(out.stdout)
    assert set(r["conditions"]) == set(changes()) and r["fer_package_model"] is None
    clean = r["conditions"]["clean"]["shipped"]
    assert "lost_points" not in clean
    for name, row in r["conditions"].items():
        assert set(row) == {"shipped"}  # no peer, no comparison
        if name != "clean":
            s = row["shipped"]
            assert s["lost_points"] == pytest.approx(100 * (clean["accuracy"] - s["accuracy"]), abs=0.02)
            low, high = s["lost_ci95_points"]
            assert low <= s["lost_points"] <= high
            assert 0 <= s["answered_neutral"] <= 1
