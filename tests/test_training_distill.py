"""The training script's distillation targets (scripts/train_fer.py --teacher): numpy only, no Keras."""
import sys

import numpy as np
import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from train_fer import blend_targets, cached_probabilities, parse_args  # noqa: E402


def _probabilities(rng: np.random.Generator, n: int, k: int = 7) -> np.ndarray:
    logits = rng.normal(0.0, 2.0, (n, k))
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def test_blend_is_the_weighted_mix_and_still_a_distribution():
    rng = np.random.default_rng(0)
    onehot = np.eye(7, dtype=np.float32)[rng.integers(0, 7, 100)]
    teacher = _probabilities(rng, 100)
    out = blend_targets(onehot, teacher, 0.3)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, 0.7 * onehot + 0.3 * teacher, atol=1e-6)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(blend_targets(onehot, teacher, 0.0), onehot)


def test_label_stays_the_top_target_up_to_an_even_blend():
    """With weight <= 0.5 a teacher that disagrees softens the target but never outvotes the label,
    so the training accuracy Keras logs is still measured against FER2013's labels."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 7, 500)
    teacher = np.eye(7)[(labels + 1) % 7] * 0.999 + 0.001 / 7  # confidently wrong everywhere
    out = blend_targets(np.eye(7, dtype=np.float32)[labels], teacher, 0.5)
    assert np.all(out.argmax(axis=1) == labels)


def test_mismatched_or_unnormalised_teachers_are_refused():
    onehot = np.eye(7, dtype=np.float32)[[0, 1, 2]]
    with pytest.raises(ValueError, match="differ in shape"):
        blend_targets(onehot, np.full((2, 7), 1 / 7), 0.5)
    with pytest.raises(ValueError, match="sum to 1"):
        blend_targets(onehot, np.full((3, 7), 0.5), 0.5)


def test_cache_serves_a_resumed_run_and_nothing_else(tmp_path):
    """A resumed run reads the teachers' probabilities back; other teachers or another training set must
    recompute them rather than train towards stale targets."""
    cached = _probabilities(np.random.default_rng(2), 10).astype(np.float32)
    cache = tmp_path / "teacher.npz"
    assert cached_probabilities(cache, ["a.keras"], 10) is None  # nothing cached yet
    np.savez(cache, probabilities=cached, teachers=np.array(["a.keras", "b.keras"]))
    np.testing.assert_array_equal(cached_probabilities(cache, ["a.keras", "b.keras"], 10), cached)
    assert cached_probabilities(cache, ["a.keras", "c.keras"], 10) is None
    assert cached_probabilities(cache, ["a.keras"], 10) is None
    assert cached_probabilities(cache, ["a.keras", "b.keras"], 11) is None


def test_teacher_weight_outside_0_to_1_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--train", "a.npz", "--val", "b.npz", "--out", "run", "--teacher-weight", "1.5"])
    assert "--teacher-weight must lie within 0..1, got 1.5" in capsys.readouterr().err
