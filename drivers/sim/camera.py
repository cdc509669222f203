"""A simulated camera: FER2013-style faces pasted into a textured scene, an image folder, or a video file.

It returns BGR uint8 frames from `read()` and raises CameraError when "unplugged" (`vanish()`), exactly as
the real cameras in drivers.camera do, so the face pipeline and its fallbacks run unchanged.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from drivers.errors import CameraError


class SimulatedCamera:
    """Frames for development and tests, from one of three sources:

    - a dataset .npz in the FER2013 format: a face of the emotion `emotion()` returns, enlarged and pasted
      at a random place of a textured 640x480 scene, so the face detector has real work to do;
    - a folder of images, played in name order (looping);
    - a video file, played through OpenCV (looping).
    `source=None` shows an empty scene (no face). `vanish()` makes every later read fail, like an unplugged
    camera.
    """

    def __init__(self, source: str | Path | None, emotion=lambda: "neutral", width: int = 640,
                 height: int = 480, seed: int = 0, classes: tuple[str, ...] | None = None):
        import cv2

        self._cv2 = cv2
        self.width, self.height = width, height
        self.rng = np.random.default_rng(seed)
        self.emotion = emotion
        self.gone = False
        self.frames_served = 0
        self._images = self._labels = None
        self._files: list[Path] = []
        self._video = None
        self.last_label: str | None = None
        self.last_box: tuple[int, int, int, int] | None = None  # where the last face was pasted (x, y, w, h)
        if source is not None:
            path = Path(source)
            if not path.exists():
                raise CameraError(f"simulated camera source {path} does not exist")
            if path.suffix == ".npz":
                data = np.load(path)
                self._images, self._labels = data["images"], data["labels"]
                self.classes = tuple(str(c) for c in data["classes"]) if "classes" in data else classes
            elif path.is_dir():
                self._files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
                if not self._files:
                    raise CameraError(f"simulated camera folder {path} holds no .png/.jpg images")
            else:
                self._video = cv2.VideoCapture(str(path))
                if not self._video.isOpened():
                    raise CameraError(f"simulated camera cannot play {path}")

    def vanish(self) -> None:
        self.gone = True

    def _scene(self) -> np.ndarray:
        """A textured background: gradient plus blurred noise, like a dim room."""
        cv2 = self._cv2
        y = np.linspace(60, 140, self.height, dtype=np.float32)[:, None]
        x = np.linspace(-20, 20, self.width, dtype=np.float32)[None, :]
        noise = cv2.GaussianBlur(self.rng.normal(0, 25, (self.height, self.width)).astype(np.float32), (0, 0), 4)
        gray = np.clip(y + x + noise, 0, 255).astype(np.uint8)
        return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)

    def _dataset_frame(self) -> np.ndarray:
        cv2 = self._cv2
        frame = self._scene()
        emotion = self.emotion()
        if self._images is None or self._labels is None or self.classes is None or emotion not in self.classes:
            self.last_label = self.last_box = None
            return frame
        candidates = np.flatnonzero(self._labels == self.classes.index(emotion))
        face = self._images[int(self.rng.choice(candidates))]
        side = int(self.rng.integers(self.height // 4, self.height // 2))
        face = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
        top = int(self.rng.integers(0, self.height - side))
        left = int(self.rng.integers(0, self.width - side))
        frame[top:top + side, left:left + side] = face[..., None]
        self.last_label = emotion
        self.last_box = (left, top, side, side)
        return frame

    def read(self) -> np.ndarray:
        if self.gone:
            raise CameraError("simulated camera vanished")
        self.frames_served += 1
        if self._images is not None:
            return self._dataset_frame()
        if self._files:
            path = self._files[(self.frames_served - 1) % len(self._files)]
            frame = self._cv2.imread(str(path), self._cv2.IMREAD_COLOR)
            if frame is None:
                raise CameraError(f"cannot decode {path}")
            return frame
        if self._video is not None:
            ok, frame = self._video.read()
            if not ok:
                self._video.set(self._cv2.CAP_PROP_POS_FRAMES, 0)
                ok, frame = self._video.read()
            if not ok:
                raise CameraError("simulated video returned no frame")
            return frame
        return self._scene()

    def close(self) -> None:
        if self._video is not None:
            self._video.release()
