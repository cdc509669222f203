"""Camera back ends: the simulated camera's three sources, OpenCV capture of a file, missing devices."""
import cv2
import numpy as np
import pytest

from drivers.camera import OpenCVCamera
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
