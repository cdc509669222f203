"""The GPU-slot path (scripts/gpu_slot.py, slot_data.py, seed_models.py), checked on the CPU so that a lent
GPU slot is never lost to a bug.

The schedule, the budget plan and the data pack are numpy only. The augmentation, the optimizer and the tiny
training runs need `pip install -e .[train]` (TensorFlow for the export, JAX for the slot's training loop);
CI installs the dev extras without them, so those tests skip there and say why. Keras fixes its backend at
its first import, so everything that trains runs in a subprocess with KERAS_BACKEND=jax.
"""
from __future__ import annotations

import importlib.util
import json
import lzma
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from pi.resources import FACE_SAMPLE, shipped

sys.path.insert(0, str(ROOT / "scripts"))
from gpu_slot import BudgetPlan, class_weights, learning_rate, macro_f1  # noqa: E402
from slot_data import FILTERS, decode_faces, encode_faces, pack, reconstruct, residuals, unpack  # noqa: E402

HAVE_TF = importlib.util.find_spec("tensorflow") is not None
HAVE_JAX = importlib.util.find_spec("jax") is not None
needs_jax = pytest.mark.skipif(not HAVE_JAX, reason="JAX is not installed (pip install -e .[train]); the slot's "
                                                    "training loop runs on Keras' JAX backend")
needs_train = pytest.mark.skipif(not (HAVE_TF and HAVE_JAX),
                                 reason="TensorFlow and JAX are not installed (pip install -e .[train]): CI installs "
                                        "the dev extras only")


def _faces() -> tuple[np.ndarray, np.ndarray]:
    s = np.load(shipped(FACE_SAMPLE))
    return s["images"], s["labels"].astype(np.int64)


def _python(code: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


# ---------------------------------------------------------------- schedule, budget, metrics (numpy)

def test_schedule_warms_up_then_anneals_to_its_floor():
    steps = np.arange(0, 120)
    lr = learning_rate(steps, 4e-3, 10, 100, 1e-5)
    assert lr[0] == pytest.approx(4e-4) and lr[9] == pytest.approx(4e-3)
    assert np.all(np.diff(lr[:10]) > 0) and np.all(np.diff(lr[10:100]) <= 0)
    assert lr[10] == pytest.approx(4e-3) and lr[100] == pytest.approx(1e-5) and lr[119] == pytest.approx(1e-5)
    assert lr[55] == pytest.approx((4e-3 + 1e-5) / 2, rel=1e-6)  # half-way down the cosine


def test_budget_plan_fits_the_deadline_and_only_shrinks():
    plan = BudgetPlan(deadline=100.0, max_epochs=500, warmup_epochs=5)
    assert plan.total_epochs() == 500 and plan.warmup_epochs() == 5
    now = 10.0 + 3.0  # compiled by t = 10, first epoch 3 s
    assert plan.after_epoch(1, 3.0, now)
    assert plan.planned == 1 + int((100.0 - now) // 3.0) == 30
    assert plan.warmup_epochs() == 3.0  # a tenth of the plan
    for done in range(2, 11):  # epochs slow down to 6 s: the plan shrinks so that it still ends in time
        now += 6.0
        plan.after_epoch(done, 6.0, now)
    assert plan.planned == 10 + int((100.0 - now) // 6.0)
    shrunk = plan.planned
    while plan.after_epoch(done + 1, 1.0, now + 1.0):  # faster epochs never lengthen the plan
        done, now = done + 1, now + 1.0
    assert plan.planned == shrunk and done + 1 == shrunk


def test_budget_plan_never_starts_an_epoch_past_the_deadline():
    plan = BudgetPlan(deadline=50.0, max_epochs=100, warmup_epochs=5)
    assert not plan.after_epoch(1, 40.0, 45.0)  # one more 40 s epoch would end at 85 s
    assert plan.planned == 1
    late = BudgetPlan(deadline=50.0, max_epochs=100, warmup_epochs=5)
    assert not late.after_epoch(1, 30.0, 70.0)  # compile and the first epoch overran: stop, keep what exists
    assert late.planned == 1


def test_class_weights_and_macro_f1():
    labels = np.array([0] * 90 + [1] * 10)
    w = class_weights(labels, 2, 0.25)
    assert w[1] / w[0] == pytest.approx(9 ** 0.25) and np.average(w[labels]) == pytest.approx(1.0)
    assert np.all(class_weights(labels, 2, 0.0) == 1.0)
    assert macro_f1(labels, labels, 7) == 1.0
    assert macro_f1(labels, np.zeros_like(labels), 7) == pytest.approx((2 * 90 / (180 + 10) + 0.0) / 2)


# ---------------------------------------------------------------- the data pack (numpy)

def test_pack_is_lossless_with_duplicates_and_fields():
    images, labels = _faces()
    dup = np.concatenate([images, images[:7], images[3:5]])
    data = {"images": dup, "labels": np.concatenate([labels, labels[:7], labels[3:5]]).astype(np.int8),
            "classes": np.array(["a", "b"])}
    other = {"images": np.concatenate([images[:5], 255 - images[2:4]]), "labels": labels[:7]}
    back = unpack(pack({"split": data, "other": other}, lanes=6))  # lanes=6: several chunks, a short last one
    for key, value in data.items():
        np.testing.assert_array_equal(back["split"][key], value)
    np.testing.assert_array_equal(back["other"]["images"], other["images"])
    np.testing.assert_array_equal(reconstruct(residuals(images)), images)
    assert back["split"]["images"].dtype == np.uint8


def test_face_coder_round_trip_extremes_and_beats_xz():
    images, _ = _faces()
    rng = np.random.default_rng(0)
    odd = np.stack([np.zeros((48, 48), np.uint8), np.full((48, 48), 255, np.uint8),
                    rng.integers(0, 256, (48, 48), dtype=np.uint8), np.tile(np.uint8([0, 255]), (48, 24))])
    for faces, lanes in ((images, 7), (odd, 3), (images[:1], 4096)):
        coded = encode_faces(faces, lanes)
        np.testing.assert_array_equal(decode_faces(coded), faces)
    xz = len(lzma.compress(residuals(images).tobytes(), format=lzma.FORMAT_XZ, filters=FILTERS))
    assert encode_faces(images)["words"].nbytes < xz


def test_residuals_are_smaller_than_pixels():
    images, _ = _faces()

    def entropy(x: np.ndarray) -> float:
        p = np.bincount(x.ravel(), minlength=256) / x.size
        p = p[p > 0]
        return float(-(p * np.log2(p)).sum())

    assert entropy(residuals(images)) < entropy(images) - 1.0  # bits per pixel saved by the predictor


# ---------------------------------------------------------------- JAX: augmentation and optimizer

@needs_jax
def test_device_augmentation_matches_the_host_augmentation():
    """Same draws as train_fer.augment_batch (numpy rng, same order), warped on the device: equal up to
    OpenCV's 1/32-pixel interpolation table."""
    r = _python("""
        import json, numpy as np, jax.numpy as jnp, sys
        sys.path.insert(0, "scripts")
        from gpu_slot import augment
        from train_fer import augment_batch
        from pi.resources import FACE_SAMPLE, shipped
        faces = np.load(shipped(FACE_SAMPLE))["images"][:40]
        n, h, w = faces.shape
        rng = np.random.default_rng(5)
        p = {"angle": rng.uniform(-10.0, 10.0, n), "scale": 1.0 + rng.uniform(-0.1, 0.1, n),
             "shift": rng.uniform(-0.1, 0.1, (n, 2)) * (w, h), "flip": rng.random(n) < 0.5}
        p["contrast"] = rng.uniform(0.8, 1.2, n)
        p["brightness"] = rng.uniform(-0.15, 0.15, n) * 255.0
        ours = np.asarray(augment(jnp.asarray(faces, jnp.float32), {k: jnp.asarray(v, jnp.float32 if k != "flip"
                                                                       else bool) for k, v in p.items()}))
        host = augment_batch(faces, np.random.default_rng(5))
        d = np.abs(ours - host)
        print(json.dumps({"mean": float(d.mean()), "p99": float(np.percentile(d, 99)),
                          "flipped": int(p["flip"].sum()), "shape": list(ours.shape)}))
    """)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["shape"] == [40, 48, 48, 1] and 0 < got["flipped"] < 40
    assert got["mean"] < 0.5 and got["p99"] < 4.0, got


@needs_jax
def test_adamw_matches_keras_adamw_with_the_same_exclusions():
    r = _python("""
        import json, numpy as np, keras, jax, jax.numpy as jnp, sys
        sys.path.insert(0, "scripts")
        from gpu_slot import adamw, decays, NO_DECAY
        model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4), keras.layers.LayerNormalization()])
        opt = keras.optimizers.AdamW(1e-2, weight_decay=0.05)
        opt.exclude_from_weight_decay(var_names=list(NO_DECAY))
        start = [np.array(v.value) for v in model.trainable_variables]
        rng = np.random.default_rng(0)
        grads = [[rng.normal(size=v.shape).astype("float32") for v in model.trainable_variables] for _ in range(3)]
        for g in grads:
            opt.apply_gradients(zip([jnp.asarray(x) for x in g], model.trainable_variables))
        mask = [decays(v.name, NO_DECAY) for v in model.trainable_variables]
        p, m, v = [jnp.asarray(x) for x in start], [jnp.zeros_like(jnp.asarray(x)) for x in start], \
            [jnp.zeros_like(jnp.asarray(x)) for x in start]
        for t, g in enumerate(grads):
            p, m, v = adamw(p, [jnp.asarray(x) for x in g], m, v, t, 1e-2, 0.05, mask)
        gap = max(float(np.abs(np.array(a) - np.array(b.value)).max()) for a, b in zip(p, model.trainable_variables))
        moved = max(float(np.abs(np.array(a) - s).max()) for a, s in zip(p, start))
        print(json.dumps({"gap": gap, "moved": moved, "mask": mask}))
    """)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["mask"] == [True, False, False, False]  # kernel decays; bias, gamma, beta do not
    assert got["moved"] > 1e-2 and got["gap"] < 1e-6, got


# ---------------------------------------------------------------- tiny training runs (slow)

@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> tuple[Path, Path]:
    """320 training faces (the 70 shipped faces, flipped and mirrored) and the 70 as validation."""
    images, labels = _faces()
    faces = np.concatenate([images, images[:, :, ::-1], images[:, ::-1], images[:, ::-1, ::-1],
                            images[:, ::-1, ::-1][:, :, ::-1]])[:320]
    d = tmp_path_factory.mktemp("slot_data")
    np.savez(d / "train.npz", images=faces, labels=np.tile(labels, 5)[:320])
    np.savez(d / "val.npz", images=images, labels=labels)
    return d / "train.npz", d / "val.npz"


def _slot(train: Path, val: Path, out: Path, *extra: str, timeout: int = 1200) -> dict:
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_slot.py"), "--train", str(train), "--val",
                        str(val), "--out", str(out), "--tiny", *extra], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return json.loads((out / "summary.json").read_text())


@pytest.mark.slow
@needs_train
def test_tiny_slot_run_checkpoints_and_exports(tiny_data, tmp_path):
    """Two epochs of ours in mixed precision, checkpoints every epoch, then scripts/export_fer.py makes the
    float and int8 files with views in the graph, which classify faces."""
    train, val = tiny_data
    run = tmp_path / "run"
    summary = _slot(train, val, run, "--budget-s", "3600")
    assert summary["epochs_completed"] == 2 == summary["epochs_planned"] and summary["stopped_by"] == "schedule"
    assert summary["precision"] == "mixed_bfloat16" and summary["compile_seconds"] > 0
    assert len(summary["checkpoint_write_seconds"]) == 2  # one write per epoch
    rows = (run / "history.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[0].startswith("epoch,loss,accuracy,val_accuracy")
    for name in ("best.keras", "last.keras"):
        assert (run / name).stat().st_size > 100_000
    assert not list(run.glob("*.partial.keras"))
    export = tmp_path / "export"
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "export_fer.py"), "--run", str(run), "--train",
                        str(train), "--val", str(val), "--out", str(export), "--calibration", "64",
                        "--view-scales", "1.0,1.1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    meta = json.loads((export / "fer.json").read_text())
    assert meta["views_in_graph"]["count"] == 4 and meta["members"][0]["arch"] == "hybrid"
    from pi.vision.fer import ExpressionClassifier
    images, _ = _faces()
    for kind in ("float", "int8"):
        clf = ExpressionClassifier(export / f"fer_{kind}.tflite", tuple(meta["classes"]), 48, threads=1)
        probs = clf.predict(images[:8])
        assert probs.shape == (8, 7) and np.allclose(probs.sum(axis=1), 1.0, atol=0.05)


@pytest.mark.slow
@needs_train
def test_short_budget_stops_after_the_first_epoch(tiny_data, tmp_path):
    """A budget already spent by compilation: the run plans one epoch, stops, and still leaves a model."""
    train, val = tiny_data
    summary = _slot(train, val, tmp_path / "run", "--budget-s", "2", "--reserve-s", "1", "--max-epochs", "5",
                    "--precision", "float32")
    assert summary["epochs_completed"] == 1 == summary["epochs_planned"] and summary["stopped_by"] == "schedule"
    assert (tmp_path / "run" / "best.keras").exists()


@pytest.mark.slow
@needs_train
@pytest.mark.parametrize("arch", ["seed-cnn", "seed-rnn", "seed-cnn-attention", "seed-mobilenet-svm",
                                  "seed-mnv2-vit"])
def test_seed_model_trains_in_the_slot_script(arch, tiny_data, tmp_path):
    train, val = tiny_data
    summary = _slot(train, val, tmp_path / "run", "--arch", arch, "--max-epochs", "1", "--limit-train", "96",
                    "--precision", "float32", "--budget-s", "3600")
    assert summary["arch"] == arch and summary["epochs_completed"] == 1
    assert np.isfinite(float((tmp_path / "run" / "history.csv").read_text().splitlines()[1].split(",")[1]))
    r = _python(f"""
        import json, numpy as np, keras, sys
        sys.path.insert(0, "scripts")
        import seed_models  # noqa: F401  (registers the custom layers)
        m = keras.models.load_model({str(tmp_path / "run" / "best.keras")!r})
        p = m.predict(np.random.default_rng(0).uniform(0, 255, (4, 48, 48, 1)).astype("float32"), verbose=0)
        print(json.dumps({{"shape": list(p.shape), "sums": p.sum(axis=1).tolist(), "input": list(m.input_shape),
                          "dtype": m.get_layer("probs").dtype_policy.name}}))
    """)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["shape"] == [4, 7] and got["input"] == [None, 48, 48, 1] and got["dtype"] == "float32"
    assert np.allclose(got["sums"], 1.0, atol=1e-4)
