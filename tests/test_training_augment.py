"""The training script's host-side augmentation and epoch data (scripts/train_fer.py): numpy + OpenCV only,
no Keras."""
import sys

import numpy as np
import pytest
from conftest import ROOT

from pi.resources import FACE_SAMPLE, shipped

sys.path.insert(0, str(ROOT / "scripts"))
from train_fer import augment_batch, epoch_batches  # noqa: E402


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    """256 distinct real faces from the shipped FER2013 sample (70 faces) and their mirror and flip images,
    so these tests need no ../shared."""
    s = np.load(shipped(FACE_SAMPLE))["images"]
    return np.concatenate([s, s[:, :, ::-1], s[:, ::-1], s[:, ::-1, ::-1]])[:256]


def test_shape_dtype_and_range(faces):
    out = augment_batch(faces, np.random.default_rng(0))
    assert out.shape == (256, 48, 48, 1) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 255.0


def test_same_seed_same_batch_other_seed_other_batch(faces):
    a = augment_batch(faces[:8], np.random.default_rng(7))
    b = augment_batch(faces[:8], np.random.default_rng(7))
    c = augment_batch(faces[:8], np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 1.0


def test_reflected_borders_leave_no_black_corners():
    # a uniform grey face stays uniform under rotation, zoom and shift only if the borders reflect;
    # a constant fill would paint the corners black after a rotation or a shift
    grey = np.full((64, 48, 48), 128, np.uint8)
    out = augment_batch(grey, np.random.default_rng(1))[..., 0]
    spread = out.max(axis=(1, 2)) - out.min(axis=(1, 2))
    assert spread.max() < 1e-3


def test_draws_stay_inside_the_documented_ranges(faces):
    # brightness ±15 % of 255 and contrast ×0.8..1.2 move an image's mean by at most ~38 grey levels
    # plus what the geometry moves in or out of the frame
    out = augment_batch(faces, np.random.default_rng(2))[..., 0]
    shift = np.abs(out.mean(axis=(1, 2)) - faces.mean(axis=(1, 2)))
    assert np.median(shift) < 25 and shift.max() < 80
    # the geometry is mild: the augmented face still correlates with the original one
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = [np.corrcoef(o.ravel(), f.ravel())[0, 1] for o, f in zip(out, faces.astype(np.float32))]
        corr_mirror = [np.corrcoef(o.ravel(), f[:, ::-1].ravel())[0, 1]
                       for o, f in zip(out, faces.astype(np.float32))]
    best = np.maximum(corr, corr_mirror)
    assert np.nanmedian(best) > 0.5  # nan: FER2013 holds a few blank images


def test_about_half_the_faces_are_mirrored():
    # an image whose left half is dark and right half bright tells a mirrored copy apart
    half = np.zeros((400, 48, 48), np.uint8)
    half[:, :, 24:] = 200
    out = augment_batch(half, np.random.default_rng(3))[..., 0]
    mirrored = out[:, :, :24].mean(axis=(1, 2)) > out[:, :, 24:].mean(axis=(1, 2))
    assert 0.4 < mirrored.mean() < 0.6


def test_an_epoch_is_whole_batches_of_the_documented_draws(faces):
    # 100 faces in batches of 32: three whole batches, the ragged 4 left out; each batch is exactly
    # augment_batch of its faces with the (seed, epoch, batch index) generator, and targets and weights
    # stay with their faces
    images, targets, weights = faces[:100], np.arange(100) * 10, np.arange(100) / 100
    x, t, w = epoch_batches(images, targets, weights, 32, seed=5, epoch=3)
    assert x.shape == (96, 48, 48, 1) and len(t) == len(w) == 96
    order = t // 10
    assert len(set(order)) == 96 and not np.array_equal(order, np.arange(96))  # shuffled, no repeats
    np.testing.assert_array_equal(w, weights[order])
    for i in range(3):
        idx = order[32 * i:32 * (i + 1)]
        np.testing.assert_array_equal(x[32 * i:32 * (i + 1)],
                                      augment_batch(images[idx], np.random.default_rng((5, 3, i))))


def test_an_epoch_depends_on_seed_and_epoch_alone(faces):
    # what a resumed run relies on: epoch k is the same whether or not the process ran epochs 0..k-1
    images, targets, weights = faces[:64], np.arange(64), np.ones(64)
    a = epoch_batches(images, targets, weights, 16, seed=1, epoch=2)
    b = epoch_batches(images, targets, weights, 16, seed=1, epoch=2)
    c = epoch_batches(images, targets, weights, 16, seed=1, epoch=3)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
