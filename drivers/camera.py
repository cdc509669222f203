"""Cameras: OpenCV VideoCapture and Picamera2 (Pi camera module); the simulated one is in drivers.sim.camera.

All return BGR uint8 frames from `read()` and raise CameraError when the device is gone, so a detection
can fall back to physiology alone and say so. `open_camera()` picks the back end from the config.
"""
from __future__ import annotations

import logging
from typing import Protocol

import numpy as np

from drivers.errors import CameraError

log = logging.getLogger(__name__)


class Camera(Protocol):
    def read(self) -> np.ndarray: ...

    def close(self) -> None: ...


class OpenCVCamera:
    """A V4L2/USB camera (or a video file) through cv2.VideoCapture."""

    def __init__(self, source: int | str = 0, width: int = 640, height: int = 480):
        import cv2

        self._cap = cv2.VideoCapture(source)
        if not self._cap.isOpened():
            raise CameraError(f"cannot open camera {source!r} (is it connected, and is the user in the "
                              "'video' group?)")
        self._cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        self._cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        self.source = source

    def read(self) -> np.ndarray:
        ok, frame = self._cap.read()
        if not ok or frame is None:
            raise CameraError(f"camera {self.source!r} returned no frame")
        return frame

    def close(self) -> None:
        self._cap.release()


class Picamera2Camera:
    """The Raspberry Pi camera module through libcamera's picamera2 (Raspberry Pi OS package python3-picamera2).

    Colour order: picamera2 names formats the way libcamera/DRM do, so "RGB888" delivers each pixel as
    [B, G, R] (OpenCV's BGR) and "BGR888" delivers [R, G, B] (Picamera2 manual, "Image formats"). We ask for
    RGB888 and hand BGR frames on, like every other camera here.
    Configuration: a preview configuration (several buffers, exposure limited by the frame rate) so that
    repeated `capture_array` calls return the next streamed frame; the still configuration has one buffer
    and allows long exposures, which makes each capture slow.
    Any failure to import picamera2 is a CameraError, not a crash at start-up: besides a missing package,
    Raspberry Pi OS's simplejpeg (imported by picamera2) raises ValueError("numpy.dtype size changed")
    when the venv's numpy is not the system numpy it was built for.
    """

    FORMAT = "RGB888"  # [B, G, R] bytes: OpenCV's BGR

    def __init__(self, width: int = 640, height: int = 480):
        try:
            from picamera2 import Picamera2
        except ImportError as exc:
            raise CameraError(f"picamera2 is not installed ({exc}): sudo apt install python3-picamera2, and "
                              "the venv must see system packages (python3 -m venv --system-site-packages)") from exc
        except Exception as exc:  # e.g. simplejpeg's "numpy.dtype size changed" under a second numpy
            raise CameraError(f"picamera2 failed to import ({type(exc).__name__}: {exc}); if numpy is named, the "
                              "venv holds a numpy other than the system's: reinstall with scripts/install_pi.sh, "
                              "which keeps the system numpy") from exc
        try:
            self._cam = Picamera2()
            self._cam.configure(self._cam.create_preview_configuration(
                main={"size": (width, height), "format": self.FORMAT}))
            self._cam.start()
        except Exception as exc:  # libcamera raises plain RuntimeError/IndexError for "no camera"
            raise CameraError(f"cannot start the Pi camera: {exc}") from None

    def read(self) -> np.ndarray:
        """The next frame, BGR uint8 (height, width, 3)."""
        try:
            return self._cam.capture_array("main")
        except Exception as exc:
            raise CameraError(f"Pi camera capture failed: {exc}") from None

    def close(self) -> None:
        self._cam.stop()
        self._cam.close()
