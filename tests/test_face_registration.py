"""The learned registration (pi/vision/registration.py): its square geometry against FaceDetector.cut, the
shipped registrar reframing misframed faces it never saw, its metadata checks, and face.align=learned."""
from __future__ import annotations

import hashlib
import json
import math
import sys

import cv2
import numpy as np
import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from train_face_registrar import DRAW, draw_offsets, inner_crop  # noqa: E402

from pi.errors import ModelError, NoFaceModelWarning, NoRegistrarWarning, RegistrarError  # noqa: E402
from pi.resources import FACE_SAMPLE, REGISTRAR_METADATA, REGISTRAR_MODEL, shipped
from pi.service import config
from pi.vision.face import FaceDetector, FacePipeline, frame_square
from pi.vision.fer import ExpressionClassifier
from pi.vision.registration import (
    FaceRegistrar,
    map_square,
    relative_map,
    square_map,
)


def offset_between(square, truth) -> tuple[float, float, float, float]:
    """(shift x, shift y, log scale, turn in degrees) of the `truth` square against `square`."""
    m = np.linalg.inv(square_map(square)) @ square_map(truth)
    centre = m[:2, :2] @ (23.5, 23.5) + m[:2, 2] - 23.5
    return (centre[0] / 48, centre[1] / 48, math.log(math.hypot(m[0, 0], m[1, 0])),
            math.degrees(math.atan2(m[1, 0], m[0, 0])))


def test_a_square_and_its_map_round_trip_and_compose():
    rng = np.random.default_rng(0)
    for _ in range(20):
        square = (*rng.uniform(50, 400, 2), rng.uniform(40, 300), rng.uniform(-30, 30))
        assert np.allclose(map_square(square_map(square)), square)
        # the true frame 5 % right, 3 % up, 20 % larger and turned 0.1 rad against the square
        moved = map_square(square_map(square) @ relative_map(0.05, -0.03, math.log(1.2), 0.1))
        assert np.allclose(offset_between(square, moved), (0.05, -0.03, math.log(1.2), math.degrees(0.1)))
        assert moved[2] == pytest.approx(1.2 * square[2]) and moved[3] == pytest.approx(square[3] + math.degrees(0.1))


def test_the_square_map_is_the_one_facedetector_cuts():
    rng = np.random.default_rng(1)
    noise = cv2.GaussianBlur(rng.uniform(0, 255, (480, 640)).astype(np.float32), (0, 0), 6)
    image = cv2.normalize(noise, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    detector = FaceDetector()

    def warped(square):
        blurred = cv2.GaussianBlur(image, (0, 0), 0.4 * square[2] / 48)
        return cv2.warpAffine(blurred, square_map(square)[:2], (48, 48),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP).astype(float)

    for square in ((300.0, 200.0, 150.0, 0.0), (310.3, 220.7, 140.0, 10.0), (290.0, 230.0, 160.0, -12.0)):
        cut = detector.cut(image, square, 48).astype(float)
        assert np.abs(cut - warped(square)).mean() < 2.5  # two resamplings apart
        if square[3]:  # the turn's sign matters: the opposite turn is far off
            assert np.abs(cut - warped((*square[:3], -square[3]))).mean() > 10


def scene(face: np.ndarray, side: int = 192, pad: int = 104) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The 48x48 face upscaled smoothly to `side` px in a grey scene (edges repeated) and its true square."""
    big = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
    frame = cv2.copyMakeBorder(big, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    return frame, (pad + side / 2, pad + side / 2, float(side), 0.0)


def test_the_shipped_registrar_reframes_faces_it_never_saw():
    """PublicTest faces (the registrar trained on Training), each framed off by a known shift and scale:
    the refined square lies nearer FER2013's own frame, in scale and in position."""
    faces = np.load(shipped(FACE_SAMPLE))["images"][:24]
    registrar = FaceRegistrar()
    detector = FaceDetector()
    before, after = [], []
    for face in faces:
        frame, truth = scene(face)
        for shift_x, shift_y, log_scale in ((0.06, 0.0, 0.15), (-0.06, 0.04, -0.15), (0.0, -0.05, 0.12)):
            # the square against which the true frame lies at this offset
            square = map_square(square_map(truth) @ np.linalg.inv(relative_map(shift_x, shift_y, log_scale, 0.0)))
            refined = registrar.refine(lambda sq, size, f=frame: detector.cut(f, sq, size, normalise=False), square)
            before.append(offset_between(square, truth))
            after.append(offset_between(refined, truth))
            assert refined[3] == 0.0  # no turn unless asked
    before, after = np.abs(before), np.abs(after)
    assert after[:, 2].mean() < 0.6 * before[:, 2].mean()  # scale
    assert np.hypot(after[:, 0], after[:, 1]).mean() < 0.7 * np.hypot(before[:, 0], before[:, 1]).mean()


def test_a_turned_face_is_turned_back_with_learned_turn():
    faces = np.load(shipped(FACE_SAMPLE))["images"][:12]
    turner, detector = FaceRegistrar(turn=True), FaceDetector()
    errors_before, errors_after = [], []
    for face in faces:
        frame, (cx, cy, side, _) = scene(face)
        turned = cv2.warpAffine(frame, cv2.getRotationMatrix2D((cx - 0.5, cy - 0.5), 12.0, 1.0),
                                frame.shape[::-1], flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
        truth = (cx, cy, side, -12.0)  # the face turned counter-clockwise is cut upright at -12 degrees
        refined = turner.refine(lambda sq, size, f=turned: detector.cut(f, sq, size, normalise=False),
                                (cx, cy, side, 0.0))
        errors_before.append(abs(offset_between((cx, cy, side, 0.0), truth)[3]))
        errors_after.append(abs(offset_between(refined, truth)[3]))
    assert np.mean(errors_after) < 0.6 * np.mean(errors_before)


DEFAULT_MODEL, DEFAULT_METADATA = shipped(REGISTRAR_MODEL), shipped(REGISTRAR_METADATA)


def test_the_shipped_metadata_describes_the_shipped_file():
    meta = json.loads(DEFAULT_METADATA.read_text())
    data = DEFAULT_MODEL.read_bytes()
    assert meta["bytes"] == len(data) and meta["sha256"] == hashlib.sha256(data).hexdigest()
    registrar = FaceRegistrar()
    assert registrar.input_size == meta["input_size"] and registrar.inner == meta["inner_fraction"]
    int8 = meta["validation"]["int8"]
    assert all(v["residual_sd"] < v["drawn_sd"] for v in int8.values())  # it learned every target
    assert meta["draw"] == DRAW  # the trainer's draw is the shipped model's: its command reproduces it


def test_bad_registrar_files_are_named(tmp_path):
    meta = json.loads(DEFAULT_METADATA.read_text())
    broken = tmp_path / "broken.json"

    def refused(bad: dict, match: str) -> None:
        broken.write_text(json.dumps(bad))
        with pytest.raises(RegistrarError, match=match):
            FaceRegistrar(DEFAULT_MODEL, broken)

    refused({k: v for k, v in meta.items() if k != "inner_fraction"}, "broken.json: 'inner_fraction'.*None")
    refused({**meta, "inner_fraction": 1.5}, "'inner_fraction' is the share.*1.5")
    refused({**meta, "target_scale": [1, 2]}, "'target_scale' needs 4 numbers")
    refused({**meta, "target_scale": [0.1, float("nan"), 0.2, 0.1]}, "'target_scale' must be a positive.*nan")
    refused({**meta, "input_size": 32.5}, "'input_size' must be a whole number.*32.5")
    refused({**meta, "input_size": 0}, "'input_size' must be a whole number.*0")
    refused({**meta, "input_size": 40}, r"takes \(1, 32, 32, 1\).*a registrar takes float32 \(1, 40, 40, 1\)")
    refused({k: v for k, v in meta.items() if k != "draw"}, "'draw'.*missing")
    refused({**meta, "draw": {**meta["draw"], "shift_limit": -0.2}}, "'shift_limit' must be a positive")
    broken.write_text("[1, 2]")
    with pytest.raises(RegistrarError, match="not a JSON object"):
        FaceRegistrar(DEFAULT_MODEL, broken)
    with pytest.raises(RegistrarError, match="not found"):
        FaceRegistrar(tmp_path / "gone.tflite", DEFAULT_METADATA)
    # the expression model is no registrar: its shape is named
    with pytest.raises(RegistrarError, match="a registrar takes float32"):
        FaceRegistrar(ROOT / "models" / "fer_int8.tflite", DEFAULT_METADATA)
    assert issubclass(RegistrarError, ModelError)


def test_predictions_stay_within_the_trained_draw(tmp_path):
    """Past the drawn offsets the network extrapolates; its answer is held to the draw's limits."""
    meta = json.loads(DEFAULT_METADATA.read_text())
    tight = tmp_path / "tight.json"
    tight.write_text(json.dumps({**meta, "draw": {**meta["draw"], "shift_limit": 0.001, "log_scale_limit": 0.002,
                                                  "turn_degrees": 0.1}}))
    shipped_registrar, held = FaceRegistrar(), FaceRegistrar(DEFAULT_MODEL, tight)
    limits = np.array([0.001, 0.001, 0.002, math.radians(0.1)])
    crops = np.random.default_rng(3).integers(0, 256, (20, held.input_size, held.input_size)).astype(np.uint8)
    free = np.array([shipped_registrar.offset(c) for c in crops])
    clamped = np.array([held.offset(c) for c in crops])
    assert np.all(np.abs(clamped) <= limits + 1e-12)
    assert np.all(np.abs(free) > limits, axis=1).any()  # the limits did bite
    draw = meta["draw"]
    assert np.all(np.abs(free) <= [draw["shift_limit"], draw["shift_limit"], draw["log_scale_limit"],
                                   math.radians(draw["turn_degrees"])])


def test_align_learned_from_the_config_runs_the_pipeline():
    face_cfg = config.load(None, ["face.align=learned"])["face"]
    detector = FaceDetector.from_config(face_cfg)
    assert detector.registrar is not None and detector.registrar.turn is False and detector.eyes is None
    assert FaceDetector(align="learned+turn").registrar.turn is True
    assert FaceDetector(align="none").registrar is None
    with pytest.raises(config.ConfigError, match="face.align"):
        config.load(None, ["face.align=learnt"])
    classifier = ExpressionClassifier.from_metadata(ROOT / "models" / "fer_int8.tflite", ROOT / "models" / "fer.json")
    faces = np.load(shipped(FACE_SAMPLE))["images"]
    frame, _ = scene(faces[0], side=160, pad=120)
    result = FacePipeline(detector, classifier).analyse(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
    assert result.box is not None and result.probabilities.sum() == pytest.approx(1, abs=0.05)
    # the pipeline cuts the registrar's square, not the Haar box's
    cx, cy, side = frame_square(result.box)
    learned = detector.square(frame, result.box)
    assert learned == detector.registrar.refine(lambda sq, size: detector.cut(frame, sq, size, normalise=False),
                                                (cx, cy, side, 0.0))
    assert abs(learned[2] / side - 1) + math.hypot(learned[0] - cx, learned[1] - cy) / side > 0.01


def test_the_configured_alignments_are_the_ones_the_detector_knows():
    from pi.service.config import SCHEMA
    from pi.vision.face import ALIGNMENTS

    assert tuple(SCHEMA["face"]["align"].choices) == ALIGNMENTS


def test_a_missing_registrar_leaves_the_haar_framing(tmp_path):
    from pi.service.device import load_face_pipeline

    cfg = config.load(None, [f"face.registrar={tmp_path / 'gone.tflite'}"])
    with pytest.warns(NoRegistrarWarning, match="gone.tflite.*FER2013's framing"):
        pipeline = load_face_pipeline(cfg)
    assert pipeline is not None and pipeline.detector.align == "none" and pipeline.detector.registrar is None


def test_a_broken_detector_is_not_taken_for_a_missing_registrar(monkeypatch):
    """Only the registrar's own faults fall back to the Haar framing: without a Haar cascade there is no
    face pipeline at all, and the warning says so."""
    import pi.vision.face
    from pi.service.device import load_face_pipeline

    def no_cascade(name: str):
        raise ModelError(f"cannot load the Haar cascade {name}")

    monkeypatch.setattr(pi.vision.face, "_cascade", no_cascade)
    with pytest.warns(NoFaceModelWarning, match="Haar cascade") as caught:
        assert load_face_pipeline(config.load(None)) is None
    assert not any(issubclass(w.category, NoRegistrarWarning) for w in caught)


def test_another_registrar_named_in_the_config_is_used_with_its_own_metadata(tmp_path, monkeypatch):
    """face.registrar alone takes the face_register.json beside it (as the trainer writes it), never the
    shipped model's figures; face.registrar_metadata names another; face.threads reaches its interpreter."""
    import pi.vision.registration

    other = tmp_path / "other"
    other.mkdir()
    (other / "face_register_int8.tflite").write_bytes(DEFAULT_MODEL.read_bytes())
    meta = json.loads(DEFAULT_METADATA.read_text())
    (other / "face_register.json").write_text(json.dumps({**meta, "inner_fraction": 0.55}))
    threads: list[int] = []
    real_open = pi.vision.registration.open_interpreter

    def spy(model_path, n=1):
        threads.append(n)
        return real_open(model_path, n)

    monkeypatch.setattr(pi.vision.registration, "open_interpreter", spy)
    cfg = config.load(None, [f"face.registrar={other / 'face_register_int8.tflite'}", "face.threads=2"])
    assert cfg["face"]["registrar_metadata"] == str(other / "face_register.json")
    detector = FaceDetector.from_config(cfg["face"])
    assert detector.registrar is not None and detector.registrar.inner == 0.55 and threads == [2]
    (tmp_path / "named.json").write_text(json.dumps({**meta, "inner_fraction": 0.6}))
    cfg = config.load(None, [f"face.registrar={other / 'face_register_int8.tflite'}",
                             f"face.registrar_metadata={tmp_path / 'named.json'}", "face.align=learned+turn"])
    detector = FaceDetector.from_config(cfg["face"])
    assert detector.registrar is not None and detector.registrar.inner == 0.6 and detector.registrar.turn
    # the shipped default pairs the shipped files
    assert config.load(None)["face"]["registrar_metadata"] == str(DEFAULT_METADATA)


def test_the_registrar_trains_on_what_it_sees_at_run_time():
    """A training input (the square's inner share cut from the 48x48 face at a drawn offset) against the
    same square cut by FaceDetector.cut from the face upscaled in a scene: the same pixels (the faces
    softened first, so that the two resamplings agree), and a turn of the wrong sign is not."""
    faces = [cv2.GaussianBlur(f, (0, 0), 1.0) for f in np.load(shipped(FACE_SAMPLE))["images"][:6]]
    registrar, detector = FaceRegistrar(), FaceDetector()
    size, inner = registrar.input_size, registrar.inner
    for face in faces:
        frame, truth = scene(face)
        for offset in ((0.05, -0.03, 0.12, 0.15), (-0.04, 0.02, -0.1, -0.2)):
            square = map_square(square_map(truth) @ np.linalg.inv(relative_map(*offset)))
            cx, cy, side, angle = square
            seen = detector.cut(frame, (cx, cy, side * inner, angle), size, normalise=False).astype(float)
            trained = inner_crop(face, np.array(offset), size, inner)
            assert np.abs(seen - trained).mean() < 2.5, offset
            wrong = inner_crop(face, np.array([*offset[:3], -offset[3]]), size, inner)
            assert np.abs(seen - wrong).mean() > 10


def test_the_training_draw_is_what_the_metadata_records():
    """The offsets drawn for training keep to DRAW (the limits the shipped registrar's predictions are held
    to come from the metadata's copy of it) and have its spreads and mean."""
    offsets = draw_offsets(np.random.default_rng(0), 20000)
    limits = [DRAW["shift_limit"], DRAW["shift_limit"], DRAW["log_scale_limit"], math.radians(DRAW["turn_degrees"])]
    assert np.all(np.abs(offsets) <= limits)
    assert offsets[:, 0].std() == pytest.approx(DRAW["shift_sd"], rel=0.05)
    assert offsets[:, 1].mean() == pytest.approx(DRAW["shift_y_mean"], abs=0.002)
    assert offsets[:, 2].std() == pytest.approx(DRAW["log_scale_sd"], rel=0.05)
    assert np.abs(offsets[:, 3]).max() > 0.95 * limits[3]  # the turn is uniform over its range
