"""Fine-tuning the shipped face model (scripts/finetune_fer.py, scripts/fer_graph.py).

The framing draws and the warp need numpy and OpenCV only; the replay of the shipped graph needs
TensorFlow (the `train` extra) and is skipped without it.
"""
import json
import sys

import numpy as np
import pytest
from conftest import ROOT

from pi.resources import FACE_SAMPLE, shipped

sys.path.insert(0, str(ROOT / "scripts"))
from finetune_fer import PERCENTILES, Framing, HaarFrames, fingerprint, warp_batch  # noqa: E402
from measure_fer_framing import haar_box  # noqa: E402

from pi.vision.face import FaceDetector  # noqa: E402

GEOMETRY = json.loads((ROOT / "models" / "fer_proxy.json").read_text())["geometry"]


def test_framing_draws_follow_the_measured_percentiles():
    side, shift = Framing(GEOMETRY).draw(np.random.default_rng(0), 200_000)
    for values, key in ((side, "fer2013_side_over_true_side"), (shift[:, 0], "centre_shift_x_in_sides"),
                        (shift[:, 1], "centre_shift_y_in_sides")):
        np.testing.assert_allclose(np.percentile(values, PERCENTILES), GEOMETRY[key], atol=0.004)


def test_framing_refuses_other_percentiles():
    with pytest.raises(ValueError, match="percentiles"):
        Framing({**GEOMETRY, "percentiles": [5, 25, 50, 75, 95]})


def _box_side(face: np.ndarray) -> float:
    ys, xs = np.nonzero(face > 128)
    return float(max(xs.max() - xs.min(), ys.max() - ys.min()) + 1)


def test_detector_framing_zooms_faces_by_the_inverse_side_ratio():
    # a bright 20-px square on black: a crop whose side is s times the frame shows it 1/s as large
    square = np.zeros((48, 48), np.uint8)
    square[14:34, 14:34] = 255
    geometry = {**GEOMETRY, "fer2013_side_over_true_side": [1.25] * 5,
                "centre_shift_x_in_sides": [0.0] * 5, "centre_shift_y_in_sides": [0.0] * 5}
    rng = np.random.default_rng(3)
    out, _ = warp_batch(np.repeat(square[None], 64, 0), rng, Framing(geometry), detector_share=1.0)
    # rotation up to 12 degrees grows the axis-aligned extent by at most cos + sin of 12 degrees
    sides = np.array([_box_side(f) for f in out])
    assert np.all(sides >= 20 / 1.25 - 1.5) and np.all(sides <= 20 / 1.25 * 1.19 + 1.5)


def test_warp_is_reproducible_and_in_range():
    faces = np.load(shipped(FACE_SAMPLE))["images"][:16]
    a, fa = warp_batch(faces, np.random.default_rng(5), Framing(GEOMETRY), 0.75)
    b, fb = warp_batch(faces, np.random.default_rng(5), Framing(GEOMETRY), 0.75)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fa, fb)
    assert a.dtype == np.float32 and a.shape == faces.shape and a.min() >= 0 and a.max() <= 255


def test_haar_box_frames_fer2013_faces_as_measured_and_finds_nothing_on_a_blank():
    faces = np.load(shipped(FACE_SAMPLE))["images"]
    detector = FaceDetector()
    boxes = [b for b in (haar_box(detector, f) for f in faces) if b is not None]
    assert len(boxes) >= 0.6 * len(faces)  # 75 % of FER2013's training faces are found
    x, y, w, h = np.median(np.array(boxes), axis=0)
    # models/fer_framing.json: median x = y = 0.010, w = h = 0.974 (quartiles of w 0.90-1.03)
    assert abs(x) < 0.06 and abs(y) < 0.06 and 0.88 < w < 1.06 and w == h
    assert haar_box(detector, np.full((48, 48), 128, np.uint8)) is None


def test_haar_frames_draw_each_faces_own_frame():
    frames = np.array([[1.2, 0.05, -0.1], [np.nan, np.nan, np.nan], [0.9, 0.0, 0.0]])
    side, shift, has = HaarFrames(frames, (0.0, 0.0)).draw(np.random.default_rng(0), np.array([2, 0, 1]))
    np.testing.assert_allclose(side, [0.9, 1.2, 1.0])
    np.testing.assert_allclose(shift, [[0.0, 0.0], [0.05, -0.1], [0.0, 0.0]])
    assert has.tolist() == [True, True, False]
    side, shift, _ = HaarFrames(np.tile([1.0, 0.0, 0.0], (1, 1)), (0.08, 0.03)).draw(
        np.random.default_rng(1), np.zeros(100_000, int))
    assert abs(np.log(side).std() - 0.08) < 0.002 and abs(shift.std() - 0.03) < 0.001
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        HaarFrames(np.zeros((4, 2)))


def test_haar_framing_zooms_framed_faces_and_keeps_the_recipe_for_the_rest():
    square = np.zeros((48, 48), np.uint8)
    square[14:34, 14:34] = 255
    faces = np.repeat(square[None], 64, 0)
    frames = np.tile([1.25, 0.0, 0.0], (64, 1))
    frames[32:] = np.nan  # no Haar box: the original recipe's zoom of +-10 %
    out, _ = warp_batch(faces, np.random.default_rng(3), HaarFrames(frames, (0.0, 0.0)), 1.0, index=np.arange(64))
    sides = np.array([_box_side(f) for f in out])
    assert np.all(sides[:32] <= 20 / 1.25 * 1.19 + 1.5)
    assert np.all(sides[32:] >= 20 * 0.9 - 1.5)
    with pytest.raises(ValueError, match="index"):
        warp_batch(faces, np.random.default_rng(3), HaarFrames(frames), 1.0)


def test_caches_are_named_by_the_faces_not_their_count():
    faces = np.load(shipped(FACE_SAMPLE))["images"]
    assert fingerprint(faces[:20]) == fingerprint(faces[:20].copy())
    assert fingerprint(faces[:20]) != fingerprint(faces[20:40])  # another draw of the same size
    assert fingerprint(faces[:20]).startswith("20-")


@pytest.fixture(scope="module")
def graph():
    pytest.importorskip("tensorflow", reason="the replay needs TensorFlow (pip install -e .[train])")
    from fer_graph import FerGraph

    return FerGraph(ROOT / "models" / "fer_float.tflite")


def test_replay_equals_the_interpreter_on_the_shipped_graph(graph):
    faces = np.load(shipped(FACE_SAMPLE))["images"][:8]
    assert graph.check(faces) < 1e-5


def test_training_path_equals_the_graph_per_network(graph):
    """The networks on single faces (any batch) give the logits the whole graph computes for its views."""
    import tensorflow as tf
    from finetune_fer import Trainer

    trainer = Trainer(ROOT / "models" / "fer_float.tflite")
    face = np.load(shipped(FACE_SAMPLE))["images"][:1].astype(np.float32)[..., None]
    values = trainer.graph.run(trainer.graph.ops, {trainer.graph.inputs[0]: tf.constant(face)}, {})
    views = values[trainer.face_id].numpy()
    np.testing.assert_allclose(views[0], face[0] / 127.5 - 1.0, atol=1e-5)  # the first view is the face itself
    logits = trainer.logits(tf.constant((views + 1.0) * 127.5))
    assert len(logits) == 2
    for got, tensor in zip(logits, trainer.logit_ids):
        np.testing.assert_allclose(got.numpy(), values[tensor].numpy(), atol=1e-4)


def test_unknown_operator_is_named(graph):
    from fer_graph import Op

    bogus = Op(999, "GATHER_ND", [graph.inputs[0]], [10**6], {})
    with pytest.raises(ValueError, match="GATHER_ND"):
        graph.run([bogus], {graph.inputs[0]: np.zeros(graph.shapes[graph.inputs[0]], np.float32)}, {})
