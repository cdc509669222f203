"""Each degraded-but-working path raises its own warning (a DegradedWarning) and keeps the device working."""
import numpy as np
import pytest

from pi.errors import (
    DegradedWarning,
    EmptySceneWarning,
    NoCameraWarning,
    NoFaceModelWarning,
    NoPriorWarning,
    NoRegistrarWarning,
    SlowKernelsWarning,
)
from pi.resources import FER_METADATA, FER_MODEL, shipped
from pi.service import config
from pi.service.device import load_face_pipeline
from pi.service.hardware import open_camera
from pi.vision import fer


def test_a_camera_that_cannot_be_opened_leaves_physiology_alone():
    cfg = config.load(None, ["camera.backend=opencv", "camera.device=63"])  # no /dev/video63 here
    with pytest.warns(NoCameraWarning, match="physiology alone"):
        camera, name = open_camera(cfg, simulate=False, clock=None, person=None)
    assert camera is None and name == "none"


def test_a_missing_face_source_shows_an_empty_scene(tmp_path):
    cfg = config.load(None, [f"sim.faces={tmp_path / 'missing.npz'}"])
    with pytest.warns(EmptySceneWarning, match="empty scene"):
        camera, name = open_camera(cfg, simulate=True, clock=None, person=None)
    assert name == "simulated" and camera.read().shape == (480, 640, 3)


def test_a_missing_face_model_leaves_physiology_alone(tmp_path):
    cfg = config.load(None, [f"face.model={tmp_path / 'gone.tflite'}"])
    with pytest.warns(NoFaceModelWarning, match="physiology alone"):
        assert load_face_pipeline(cfg) is None


def test_a_graph_the_delegate_refuses_runs_on_the_builtin_kernels(monkeypatch):
    real_cls, runtime = fer.load_interpreter_class()

    class RefusingDelegate(real_cls):  # the real interpreter, whose default XNNPACK delegate says no
        def __init__(self, *args, **kwargs):
            if "experimental_op_resolver_type" not in kwargs:
                raise RuntimeError("Failed to apply XNNPACK delegate")
            super().__init__(*args, **kwargs)

    RefusingDelegate.__module__ = real_cls.__module__  # the fallback looks up OpResolverType there
    monkeypatch.setattr(fer, "load_interpreter_class", lambda: (RefusingDelegate, runtime))
    with pytest.warns(SlowKernelsWarning, match="built-in kernels"):
        classifier = fer.ExpressionClassifier.from_metadata(shipped(FER_MODEL), shipped(FER_METADATA))
    assert classifier.xnnpack is False
    probabilities = classifier.predict(np.zeros((1, 48, 48), np.uint8))
    assert probabilities.shape == (1, 7) and probabilities.sum() == pytest.approx(1, abs=0.05)  # int8 output steps


def test_every_specific_warning_is_a_degraded_warning():
    for w in (NoCameraWarning, NoFaceModelWarning, SlowKernelsWarning, EmptySceneWarning, NoPriorWarning,
              NoRegistrarWarning):
        assert issubclass(w, DegradedWarning) and issubclass(w, UserWarning)
