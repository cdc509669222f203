"""Camera back ends: the simulated camera's three sources, OpenCV capture of a file, picamera2, missing devices."""
import sys

import cv2
import numpy as np
import pytest

from drivers.camera import OpenCVCamera, Picamera2Camera
from drivers.sim.camera import SimulatedCamera
from pi.errors import CameraError


def write_video(path, frames=6, size=(160, 120)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, size)
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), 40 * i, np.uint8))
    writer.release()


def test_folder_of_images_plays_in_name_order_and_loops(tmp_path):
    for i, value in enumerate((10, 120, 240)):
        cv2.imwrite(str(tmp_path / f"{i:02d}.png"), np.full((60, 80, 3), value, np.uint8))
    camera = SimulatedCamera(tmp_path)
    seen = [int(camera.read()[0, 0, 0]) for _ in range(4)]
    assert seen == [10, 120, 240, 10]


def test_video_file_plays_and_loops(tmp_path):
    path = tmp_path / "clip.avi"
    write_video(path, frames=3)
    camera = SimulatedCamera(path)
    levels = [int(camera.read().mean()) for _ in range(4)]
    assert levels[0] < levels[1] < levels[2] and abs(levels[3] - levels[0]) <= 2
    camera.close()


def test_opencv_camera_reads_a_file_source_and_fails_clearly_without_one(tmp_path):
    path = tmp_path / "clip.avi"
    write_video(path)
    camera = OpenCVCamera(str(path), 160, 120)
    assert camera.read().shape == (120, 160, 3)
    camera.close()
    with pytest.raises(CameraError, match="cannot open camera"):
        OpenCVCamera(str(tmp_path / "no-such-device"))


def test_empty_scene_and_vanishing():
    camera = SimulatedCamera(None, width=320, height=240)
    frame = camera.read()
    assert frame.shape == (240, 320, 3) and frame.std() > 5  # textured, not flat
    camera.vanish()
    with pytest.raises(CameraError, match="vanished"):
        camera.read()


class FakePicamera2:
    """Stands in for the camera (hardware) behind picamera2's API, with libcamera's byte orders:
    "RGB888" arrays are [B, G, R] per pixel, "BGR888" arrays [R, G, B] (Picamera2 manual, image formats).
    The scene is red on the left half and blue on the right half.
    """

    instances: list = []

    def __init__(self):
        self.config = None
        self.started = False
        FakePicamera2.instances.append(self)

    def _config(self, use_case, buffer_count, main):
        return {"use_case": use_case, "buffer_count": buffer_count, "main": dict(main)}

    def create_preview_configuration(self, main=None, buffer_count=4, **kw):
        return self._config("preview", buffer_count, main or {})

    def create_video_configuration(self, main=None, buffer_count=6, **kw):
        return self._config("video", buffer_count, main or {})

    def create_still_configuration(self, main=None, buffer_count=1, **kw):
        return self._config("still", buffer_count, main or {})

    def configure(self, config):
        self.config = config

    def start(self):
        self.started = True

    def capture_array(self, name="main"):
        w, h = self.config["main"]["size"]
        rgb = np.zeros((h, w, 3), np.uint8)
        rgb[:, : w // 2] = (255, 0, 0)  # red, as R, G, B
        rgb[:, w // 2:] = (0, 0, 255)  # blue
        order = {"RGB888": [2, 1, 0], "BGR888": [0, 1, 2]}[self.config["main"]["format"]]
        return rgb[..., order].copy()

    def stop(self):
        self.started = False

    def close(self):
        pass


@pytest.fixture
def fake_picamera2(monkeypatch):
    import types

    module = types.ModuleType("picamera2")
    module.Picamera2 = FakePicamera2
    FakePicamera2.instances.clear()
    monkeypatch.setitem(sys.modules, "picamera2", module)
    return FakePicamera2


def test_picamera2_frames_are_bgr_so_red_stays_red(fake_picamera2):
    camera = Picamera2Camera(64, 48)
    frame = camera.read()
    assert frame.shape == (48, 64, 3)
    assert frame[10, 5].tolist() == [0, 0, 255] and frame[10, 60].tolist() == [255, 0, 0]  # BGR red, BGR blue
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)  # what the face pipeline does
    assert int(gray[10, 5]) == 76 and int(gray[10, 60]) == 29  # 0.299 R and 0.114 B, not swapped
    camera.close()


def test_picamera2_streams_from_a_preview_configuration(fake_picamera2):
    Picamera2Camera(640, 480)
    config = fake_picamera2.instances[-1].config
    assert config["use_case"] != "still" and config["buffer_count"] >= 2
    assert config["main"] == {"size": (640, 480), "format": "RGB888"}


@pytest.mark.parametrize("body, kind", [
    ("raise ValueError('numpy.dtype size changed, may indicate binary incompatibility. "
     "Expected 96 from C header, got 88 from PyObject')", "ValueError"),
    ("raise ImportError('libcamera')", "not installed"),
])
def test_a_picamera2_that_fails_to_import_is_a_camera_error(tmp_path, monkeypatch, body, kind):
    package = tmp_path / "picamera2"
    package.mkdir()
    (package / "__init__.py").write_text(body + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "picamera2", raising=False)
    with pytest.raises(CameraError, match=kind):
        Picamera2Camera()


def test_daemon_start_up_survives_a_broken_picamera2(tmp_path, monkeypatch):
    from pi.errors import DegradedWarning
    from pi.service import config
    from pi.service.hardware import open_camera

    package = tmp_path / "picamera2"
    package.mkdir()
    (package / "__init__.py").write_text("raise ValueError('numpy.dtype size changed')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "picamera2", raising=False)
    cfg = config.load(None, ["camera.backend=picamera2"])
    with pytest.warns(DegradedWarning, match="numpy.dtype size changed"):
        camera, name = open_camera(cfg, simulate=False, clock=None, person=None)
    assert camera is None and name == "none"
