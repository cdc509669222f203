"""The face half on the shipped model: runtime fallback chain, real TFLite inference, real OpenCV Haar."""
import json

import cv2
import numpy as np
import pytest
from conftest import FER_PUBLIC, ROOT, needs_fer2013, run_cli

from drivers.sim.camera import SimulatedCamera
from pi.errors import CameraError, ModelError
from pi.resources import FACE_SAMPLE, shipped
from pi.service import config
from pi.vision.evaluation import stratified_sample
from pi.vision.face import FaceDetector, FacePipeline, square_pixels
from pi.vision.fer import ExpressionClassifier, FaceViews, load_interpreter_class, read_metadata, zoom_matrix

MODEL = ROOT / "models" / "fer_int8.tflite"
META = ROOT / "models" / "fer.json"
needs_data = needs_fer2013


@pytest.fixture(scope="module")
def classifier():
    return ExpressionClassifier.from_metadata(MODEL, META, threads=1)


def test_runtime_fallback_chain():
    cls, name = load_interpreter_class((("no_such_runtime.interpreter", "Interpreter"),
                                        ("ai_edge_litert.interpreter", "Interpreter")))
    assert name == "ai_edge_litert.interpreter" and cls.__name__ == "Interpreter"
    with pytest.raises(ModelError, match="no TFLite runtime found.*no_such_runtime"):
        load_interpreter_class((("no_such_runtime.interpreter", "Interpreter"),))


def test_shipped_model_matches_its_metadata(classifier):
    meta = read_metadata(META)
    assert classifier.classes == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    assert meta["input_size"] == 48 and MODEL.stat().st_size <= 3 * 1024 * 1024
    assert classifier._in["dtype"] == np.int8  # full-integer model
    q = meta["int8_input_quantization"]
    assert (q["scale"], q["zero_point"]) == tuple(classifier._in["quantization"])
    probs = classifier.predict(np.full((2, 48, 48), 128, np.uint8))
    assert probs.shape == (2, 7) and np.allclose(probs.sum(axis=1), 1, atol=0.05)


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        ExpressionClassifier(tmp_path / "nope.tflite", ("a",))


@pytest.mark.slow
@needs_data
def test_500_publictest_images_reproduce_the_recorded_accuracy(classifier):
    data = np.load(FER_PUBLIC)
    pick = np.random.default_rng(0).choice(len(data["labels"]), 500, replace=False)  # the file is sorted by class
    images, labels = data["images"][pick], data["labels"][pick].astype(int)
    accuracy = float(np.mean(classifier.predict(images).argmax(1) == labels))
    recorded = read_metadata(META)["publictest"]["int8"]["accuracy"]
    # 500 images: the binomial standard error is ~2.2 points; allow 3 of them either way
    assert abs(accuracy - recorded) < 0.066, (accuracy, recorded)
    # the bar, on this fixed draw (deterministic: same faces, same int8 kernels every run)
    assert accuracy >= 0.65, accuracy
    majority = np.bincount(labels).max() / len(labels)
    assert accuracy > majority + 0.2  # far above always answering the commonest class


@needs_data
def test_face_is_found_in_a_synthetic_frame():
    camera = SimulatedCamera(FER_PUBLIC, emotion=lambda: "happy", seed=5)
    detector = FaceDetector()
    hits = 0
    for _ in range(20):
        frame = camera.read()
        gray = frame[..., 0]
        box, _ = detector.find(gray)
        if box is None:
            continue
        hits += 1
        x, y, w, h = box
        tx, ty, tw, th = camera.last_box
        # the box is centred on the pasted face and about its size (Haar boxes include some forehead/chin)
        assert tx <= x + w / 2 <= tx + tw and ty <= y + h / 2 <= ty + th, (box, camera.last_box)
        assert 0.5 * tw <= w <= 1.5 * tw, (box, camera.last_box)
    assert hits >= 14  # Haar misses some FER faces (profiles, occlusions); most are found


def test_zoom_matrix_is_bilinear_about_the_centre_with_reflected_borders():
    for scale in (0.5, 0.9, 1.1, 2.0):
        m = zoom_matrix(48, scale)
        assert np.allclose(m.sum(axis=1), 1) and (m >= 0).all()  # each output pixel is a weighted mean
        assert np.allclose(m[::-1, ::-1], m)  # symmetric about the centre: the zoom does not shift the face
    assert np.array_equal(zoom_matrix(5, 1.0), np.eye(5)) and np.array_equal(zoom_matrix(5, 1.0, True), np.eye(5)[::-1])
    out = zoom_matrix(5, 0.5)  # zoom out by 2: output 0 reads source 2 - 2/0.5 = -2, reflected to source 1
    assert np.allclose(out[0], [0, 1, 0, 0, 0]) and np.allclose(out[2], [0, 0, 1, 0, 0])


def test_face_views_zoom_about_the_centre_and_mirror():
    face = np.zeros((1, 48, 48), np.uint8)
    face[0, 14:34, 10:30] = 255  # a bright 20x20 square, rows centred on 23.5, columns on 19.5
    views = FaceViews((1.0, 1.25), flip=True).views(face)
    assert views.shape == (4, 1, 48, 48)
    plain, mirrored, zoomed, zoomed_mirrored = views[:, 0]
    assert np.array_equal(plain, face[0]) and np.array_equal(mirrored, face[0, :, ::-1])
    assert np.array_equal(zoomed_mirrored, zoomed[:, ::-1])
    bright = np.argwhere(zoomed > 127)
    assert 1.4 < len(bright) / 400 < 1.8  # zooming in by 1.25 enlarges the square ~1.56x
    # about the centre (23.5, 23.5): the rows stay centred, the columns' centre moves from 19.5 to ~18.5
    assert abs(bright[:, 0].mean() - 23.5) < 0.3 and abs(bright[:, 1].mean() - 18.5) < 0.4


def test_normalised_views_add_the_face_with_its_contrast_restored():
    rng = np.random.default_rng(1)
    flat = np.clip(120 + 0.3 * rng.normal(0, 40, (2, 48, 48)), 0, 255).astype(np.uint8)  # a dim, flat crop
    views = FaceViews(normalised="equalize")
    assert views.count == 2 and FaceViews((1.0, 1.1), flip=True, normalised="clahe").count == 8
    as_cut, equalised = views.views(flat)
    assert np.array_equal(as_cut, flat)
    assert np.array_equal(equalised, np.stack([cv2.equalizeHist(f) for f in flat]))
    assert equalised.std() > 3 * flat.std()
    with pytest.raises(ValueError, match="normalised views"):
        FaceViews(normalised="gamma")
    # one face, or none, as the plain views take them
    assert views.views(flat[0]).shape == (2, 1, 48, 48)
    assert views.views(flat[:0]).shape == FaceViews().views(flat[:0]).shape == (1, 0, 48, 48)


def test_the_configured_normalisations_are_the_ones_photometry_knows():
    from pi.service.config import SCHEMA
    from pi.vision.photometry import NORMALISATIONS

    for key in ("normalise", "normalised_view"):
        assert tuple(SCHEMA["face"][key].choices) == NORMALISATIONS, key


@pytest.mark.parametrize("scales", [(), (0.2,), (1.0, 2.5)])
def test_face_views_refuse_impossible_zooms(scales):
    with pytest.raises(ValueError, match="0.5..2.0"):
        FaceViews(scales)


@pytest.mark.slow
@needs_data
def test_shipped_model_averages_its_mirror_image_in_the_graph(classifier):
    # views_in_graph: one invoke classifies the zoomed and mirrored views and averages them, so a face and
    # its mirror image get the same probabilities. A one-view network disagrees on about a quarter of faces.
    assert read_metadata(META)["views_in_graph"]["flip"]
    data = np.load(FER_PUBLIC)
    faces = data["images"][np.random.default_rng(2).choice(len(data["labels"]), 200, replace=False)]
    plain, mirrored = classifier.predict(faces), classifier.predict(faces[:, :, ::-1])
    assert np.abs(plain - mirrored).max() < 0.02
    assert np.mean(plain.argmax(1) == mirrored.argmax(1)) >= 0.99


@needs_data
def test_runtime_views_average_extra_invokes(classifier):
    data = np.load(FER_PUBLIC)
    faces = data["images"][:20]
    assert np.allclose(FaceViews().predict(classifier, faces), classifier.predict(faces))
    views = FaceViews((0.9, 1.1))
    zoomed = views.predict(classifier, faces)  # two invokes per face, averaged
    by_hand = (classifier.predict(views.views(faces)[0]) + classifier.predict(views.views(faces)[1])) / 2
    assert zoomed.shape == (20, 7) and np.allclose(zoomed, by_hand, atol=1e-6)
    assert not np.allclose(zoomed, classifier.predict(faces), atol=0.01)  # the zoomed views change the answer
    both = FaceViews(normalised="clahe").predict(classifier, faces)
    clahe = np.stack([cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4)).apply(f) for f in faces])
    assert np.allclose(both, (classifier.predict(faces) + classifier.predict(clahe)) / 2, atol=1e-6)


def test_no_face_is_an_outcome_not_a_guess(classifier):
    camera = SimulatedCamera(None, seed=1)  # an empty textured scene
    pipeline = FacePipeline(FaceDetector(), classifier)
    result = pipeline.analyse(camera.read())
    assert result.box is None and result.probabilities is None


def test_crop_pads_at_the_frame_edge_by_repeating_the_border():
    detector = FaceDetector(margin=0.25)
    gray = np.tile(np.arange(100, dtype=np.uint8) * 2, (100, 1))  # columns 0, 2, ..., 198
    face = detector.crop(gray, (80, 40, 20, 20), 30)  # a 30-px square from x = 75 to 105: 5 px outside
    assert face.shape == (30, 30)
    assert np.array_equal(face[0, :25], gray[0, 75:100])  # inside the frame: the pixels themselves
    assert np.all(face[:, 25:] == gray[0, 99])  # past the right edge: the last column repeated, not black


@pytest.mark.parametrize("x0, y0, n", [(30, 20, 40), (-15, 10, 40), (70, 65, 40), (-30, -25, 30),
                                       (-10, -10, 120), (130, 150, 20), (-60, 40, 25)])
def test_square_pixels_repeat_the_frame_edge_like_a_padded_frame(x0, y0, n):
    """Inside, across an edge or a corner, larger than the frame or wholly outside it: the same pixels
    as cutting the square from the frame padded by BORDER_REPLICATE on every side."""
    gray = np.random.default_rng(0).integers(0, 256, (90, 110), dtype=np.uint8)
    pad = 200
    padded = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    expected = padded[y0 + pad:y0 + pad + n, x0 + pad:x0 + pad + n]
    assert np.array_equal(square_pixels(gray, x0, y0, n), expected)
    inside = square_pixels(gray, 30, 20, 40)
    assert np.shares_memory(inside, gray)  # inside the frame it is a view, not a copy


@needs_data
def test_detection_uses_the_face(broker, tmp_path):
    from pi.service.device import create

    cfg = config.load(None, [f"mqtt.port={broker.port}", "sim.speed=20", f"device.data_dir={tmp_path}",
                             "sim.emotion=happy", "camera.frames_per_window=8", "sim.seed=3"])
    device = create(cfg, simulate=True)
    device.start()
    try:
        result = device.detect(4)
    finally:
        device.stop()
    assert result["face_available"] and result["faces_found"] >= 4
    assert result["basis"] == "face"
    face = {c: result[f"face_{c}"] for c in ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")}
    assert max(face, key=face.get) == "happy"
    assert result["emotion"] in ("happy", "uncertain")


@needs_data
def test_camera_vanishing_mid_run_leaves_physiology(broker, tmp_path):
    from pi.service.device import create

    cfg = config.load(None, [f"mqtt.port={broker.port}", "sim.speed=20", f"device.data_dir={tmp_path}"])
    device = create(cfg, simulate=True)
    device.start()
    try:
        device.warm_up()  # as the CLI does: the beat-rate estimator has its reference before the window
        device.hw.camera.vanish()
        result = device.detect(3)
    finally:
        device.stop()
    assert not result["face_available"] and result["physiology_available"]
    assert result["emotion"] == "unknown" and "camera failed" in result["notes"]
    assert result["bpm_mean"] is not None


def test_simulated_camera_source_errors(tmp_path):
    with pytest.raises(CameraError, match="does not exist"):
        SimulatedCamera(tmp_path / "missing.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CameraError, match="no .png"):
        SimulatedCamera(tmp_path / "empty")


@needs_data
def test_fer_eval_cli_reports_metrics(tmp_path):
    data = np.load(FER_PUBLIC)
    small = tmp_path / "small.npz"
    pick = np.random.default_rng(1).choice(len(data["labels"]), 120, replace=False)
    np.savez(small, images=data["images"][pick], labels=data["labels"][pick])
    result = run_cli("fer-eval", str(small), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["n"] == 120 and 0 <= report["accuracy"] <= 1 and 0 <= report["macro_f1"] <= 1
    assert len(report["confusion"]) == 7 and sum(map(sum, report["confusion"])) == 120
    assert set(report["per_class"]["happy"]) == {"precision", "recall", "f1", "support"}
    assert report["scales"] == [1.0] and report["flip"] is False  # the model alone unless asked
    views = json.loads(run_cli("fer-eval", str(small), "--json", "--flip", "--scales", "0.9,1,1.1").stdout)
    assert views["scales"] == [0.9, 1.0, 1.1] and views["flip"] is True and views["n"] == 120
    bad = run_cli("fer-eval", str(small), "--scales", "0.9,huge")
    assert bad.returncode == 2 and "comma-separated numbers, got '0.9,huge'" in bad.stderr
    bad = run_cli("fer-eval", str(small), "--scales", "0.9,3")
    assert bad.returncode == 2 and "within 0.5..2.0" in bad.stderr


def test_run_time_views_on_a_model_with_views_in_its_graph_are_warned_about(caplog):
    from pi.service.device import load_face_pipeline

    with caplog.at_level("WARNING", logger="pi.service.device"):
        pipeline = load_face_pipeline(config.load(None, ["face.flip_average=true", "face.normalised_view=none"]))
    assert pipeline.views.count == 2
    in_graph = read_metadata(META)["views_in_graph"]["count"]
    assert f"already averages {in_graph} views in its graph" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="pi.service.device"):
        assert load_face_pipeline(config.load(None, ["face.normalised_view=none"])).views.count == 1
        # the shipped default adds the equalised view: no zoom, so the graph's views do not compound with it
        default = load_face_pipeline(config.load(None)).views
        assert (default.normalised, default.count) == ("equalize", 2)
    assert "already averages" not in caplog.text and "second time" not in caplog.text
    with caplog.at_level("WARNING", logger="pi.service.device"):
        load_face_pipeline(config.load(None, ["face.normalise=equalize"]))
    assert "classifies a nearly identical face a second time" in caplog.text


def test_limit_draws_a_stratified_sample_not_the_first_rows():
    labels = np.repeat(np.arange(7), [300, 30, 300, 600, 400, 250, 400])  # sorted by class, as files often are
    pick = stratified_sample(labels, 300, seed=0)
    assert len(pick) == 300 and len(set(pick.tolist())) == 300
    counts = np.bincount(labels[pick], minlength=7)
    assert np.all(np.abs(counts - np.bincount(labels) * 300 / len(labels)) < 1)  # proportional, to one item
    assert np.array_equal(pick, stratified_sample(labels, 300, seed=0))  # reproducible
    assert not np.array_equal(pick, stratified_sample(labels, 300, seed=1))
    assert np.array_equal(stratified_sample(labels, 5000), np.arange(len(labels)))


@pytest.mark.e2e
def test_fer_eval_limit_covers_every_class_of_a_class_sorted_file(tmp_path):
    sample = np.load(shipped(FACE_SAMPLE))  # 10 faces a class, sorted by class
    path = tmp_path / "sorted.npz"
    np.savez(path, images=sample["images"], labels=sample["labels"])
    result = run_cli("fer-eval", str(path), "--limit", "14", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["n"] == 14 and report["sample"] == {"limit": 14, "seed": 0, "stratified": True}
    assert [row["support"] for row in report["per_class"].values()] == [2] * 7
