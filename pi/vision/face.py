"""Face pipeline: find the face in a camera frame (OpenCV Haar cascades) and classify its expression.

Haar detection runs on a frame downscaled to `detect_width` (at 640x480 and scaleFactor 1.1 it costs tens
of milliseconds on full frames, far more than the classifier); the largest frontal face wins, with a
profile cascade (both directions) as the fall-back. The box gets a margin, is made square, cropped from
the full-resolution grayscale frame and resized to the model's input. "No face" is an outcome, not a guess.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from pi.errors import ModelError
from pi.vision.fer import ExpressionClassifier, FaceViews


@dataclass(frozen=True)
class FaceResult:
    box: tuple[int, int, int, int] | None  # x, y, w, h in the full frame; None: no face
    probabilities: np.ndarray | None  # over the classifier's classes
    cascade: str | None  # which cascade found it


def _cascade(name: str) -> cv2.CascadeClassifier:
    """A Haar cascade shipped as package data of opencv-python-headless 4.x (cv2/data/)."""
    path = Path(str(resources.files("cv2").joinpath("data", name)))
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        raise ModelError(f"cannot load the Haar cascade {path} (opencv-python-headless 4.x ships it)")
    return cascade


class FaceDetector:
    def __init__(self, detect_width: int = 320, min_face: int = 48, margin: float = 0.1,
                 scale_factor: float = 1.1):
        self.frontal = _cascade("haarcascade_frontalface_default.xml")
        self.profile = _cascade("haarcascade_profileface.xml")
        self.detect_width = detect_width
        self.min_face = min_face
        self.margin = margin
        self.scale_factor = scale_factor

    def find(self, gray: np.ndarray) -> tuple[tuple[int, int, int, int] | None, str | None]:
        """The largest face's (x, y, w, h) in `gray`'s coordinates, and the cascade that found it."""
        scale = min(1.0, self.detect_width / gray.shape[1])
        small = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else gray
        small = cv2.equalizeHist(small)
        size = (self.min_face, self.min_face)
        found, name = self.frontal.detectMultiScale(small, self.scale_factor, 5, minSize=size), "frontal"
        if len(found) == 0:
            found, name = self.profile.detectMultiScale(small, self.scale_factor, 5, minSize=size), "profile"
            if len(found) == 0:
                flipped = self.profile.detectMultiScale(cv2.flip(small, 1), self.scale_factor, 5,
                                                       minSize=size)
                found = [(small.shape[1] - x - w, y, w, h) for x, y, w, h in flipped]
        if len(found) == 0:
            return None, None
        x, y, w, h = (int(round(v / scale)) for v in max(found, key=lambda b: b[2] * b[3]))
        return (x, y, w, h), name

    def crop(self, gray: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
        """Square crop around `box` with the margin, padded at the frame edges, resized to size x size."""
        x, y, w, h = box
        side = int(round(max(w, h) * (1 + 2 * self.margin)))
        cx, cy = x + w / 2, y + h / 2
        x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
        padded = cv2.copyMakeBorder(gray, side, side, side, side, cv2.BORDER_REPLICATE)
        face = padded[y0 + side:y0 + 2 * side, x0 + side:x0 + 2 * side]
        return cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA)


class FacePipeline:
    """Frame in, FaceResult out. `views` adds run-time views of the face, one invoke each; the default is
    the face as cropped (the shipped model averages its own views inside the graph)."""

    def __init__(self, detector: FaceDetector, classifier: ExpressionClassifier, views: FaceViews = FaceViews()):
        self.detector = detector
        self.classifier = classifier
        self.views = views

    @property
    def classes(self) -> tuple[str, ...]:
        return self.classifier.classes

    def analyse(self, frame: np.ndarray) -> FaceResult:
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
        box, cascade = self.detector.find(gray)
        if box is None:
            return FaceResult(None, None, None)
        face = self.detector.crop(gray, box, self.classifier.input_size)
        return FaceResult(box, self.views.predict(self.classifier, face)[0], cascade)
