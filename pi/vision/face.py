"""Face pipeline: find the face in a camera frame (OpenCV Haar cascades) and classify its expression.

Haar detection runs on a frame downscaled to `detect_width` (at 640x480 and scaleFactor 1.1 it costs tens
of milliseconds on full frames, far more than the classifier); the largest frontal face wins, with a
profile cascade (both directions) as the fall-back. "No face" is an outcome, not a guess.

The crop gives the model what it was trained on. FER2013's faces were framed by an automatic registration
whose frame almost coincides with a Haar box: on upscaled FER2013 training faces the frontal cascade's box
falls at FER_FRAME_IN_HAAR_BOX of the 48x48 frame (scripts/measure_fer_framing.py, models/fer_framing.json).
With no `margin` (the default) the crop inverts that: from the Haar box of a real face it cuts the square
FER2013 would have cut; a `margin` instead grows the box by a fixed share, the earlier hand-chosen crop.
`align="learned"` (the shipped default) then moves and scales that square to where FER2013 would have
framed this face, as a small CNN predicts from the face (pi/vision/registration.py); "learned+turn" also
turns it as predicted. `align="rotate"` turns the face upright from the eyes (OpenCV's eye cascade) before
cropping; `align="eyes"` also frames it by the eyes, placing them where they sit in FER2013's frames
(FER_EYES), which does not depend on how much hair, forehead or background the Haar box takes in.
`normalise` optionally equalises the crop's histogram. The proxy benchmark (scripts/bench_face_proxy.py) measures each.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pi.errors import ModelError
from pi.vision.fer import ExpressionClassifier, FaceViews
from pi.vision.photometry import NORMALISATIONS, normalise_face
from pi.vision.registration import FaceRegistrar

Box = tuple[int, int, int, int]  # x, y, w, h

# Where the frontal Haar box falls inside FER2013's 48x48 frame, as fractions of the frame: median x, y, w, h
# over upscaled FER2013 training faces (models/fer_framing.json; tests keep the two in step).
FER_FRAME_IN_HAAR_BOX = (0.0104, 0.0104, 0.974, 0.974)
PICKS = ("confident", "largest")
ALIGNMENTS = ("none", "rotate", "eyes", "learned", "learned+turn")
# Where the eyes sit in FER2013's 48x48 frame: their midpoint (x, y) and distance as fractions of the frame,
# medians over the same upscaled training faces (models/fer_framing.json, replicate padding, eyes).
FER_EYES = (0.4936, 0.3849, 0.3782)
# Framing by the eyes is trusted when it agrees with the Haar box's framing to within this factor in size
EYES_AGREE = 1.3


@dataclass(frozen=True)
class FaceResult:
    box: tuple[int, int, int, int] | None  # x, y, w, h in the full frame; None: no face
    probabilities: np.ndarray | None  # over the classifier's classes
    cascade: str | None  # which cascade found it
    angle: float = 0.0  # degrees the face was turned to stand upright (0 without alignment or eyes)


def _cascade(name: str) -> cv2.CascadeClassifier:
    """A Haar cascade shipped as package data of opencv-python-headless 4.x (cv2/data/)."""
    path = Path(str(resources.files("cv2").joinpath("data", name)))
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        raise ModelError(f"cannot load the Haar cascade {path} (opencv-python-headless 4.x ships it)")
    return cascade


def frame_square(box: Box, margin: float | None = None,
                 frame: tuple[float, float, float, float] = FER_FRAME_IN_HAAR_BOX) -> tuple[float, float, float]:
    """The square (centre x, centre y, side) to cut around a Haar `box`.

    No margin: the square in which the box sits where Haar boxes sit in FER2013's frames, so the crop has
    FER2013's framing: side = w / frame_w, and the box's corner lies frame_x, frame_y sides from the
    square's corner. A margin: the box made square and grown by `margin` of its side on every edge (the
    earlier hand-chosen crop; a negative margin cuts inside the box).
    """
    x, y, w, h = box
    if margin is None:
        fx, fy, fw, fh = frame
        side = 0.5 * (w / fw + h / fh)
        return x - fx * side + side / 2, y - fy * side + side / 2, side
    return x + w / 2, y + h / 2, max(w, h) * (1 + 2 * margin)


def square_pixels(gray: np.ndarray, x0: int, y0: int, n: int) -> np.ndarray:
    """The n x n pixels from (x0, y0), the frame's edge repeated where the square runs past it.

    A view of the frame when the square lies inside it (the usual case: no copy); otherwise only the
    square's own pixels are gathered, with clamped coordinates (what BORDER_REPLICATE padding of the whole
    frame gives, without copying the frame once per cut).
    """
    height, width = gray.shape[:2]
    if x0 >= 0 and y0 >= 0 and x0 + n <= width and y0 + n <= height:
        return gray[y0:y0 + n, x0:x0 + n]
    rows = np.clip(np.arange(y0, y0 + n), 0, height - 1)
    cols = np.clip(np.arange(x0, x0 + n), 0, width - 1)
    return gray[np.ix_(rows, cols)]


class FaceDetector:
    def __init__(self, detect_width: int = 320, min_face: int = 48, margin: float | None = None,
                 scale_factor: float = 1.1, *, align: str = "none", normalise: str = "none",
                 pick: str = "confident", registrar_files: tuple[str | Path, str | Path | None] | None = None,
                 threads: int = 1):
        """Defaults are the plain Haar framing (align "none"), what a script or test asks for explicitly;
        the device's configuration (`from_config`, config.yaml) ships align "learned"."""
        if align not in ALIGNMENTS:
            raise ValueError(f"align must be one of {ALIGNMENTS}, got {align!r}")
        if pick not in PICKS:
            raise ValueError(f"pick must be one of {PICKS}, got {pick!r}")
        if normalise not in NORMALISATIONS:
            raise ValueError(f"normalise must be one of {NORMALISATIONS}, got {normalise!r}")
        self.frontal = _cascade("haarcascade_frontalface_default.xml")
        self.profile = _cascade("haarcascade_profileface.xml")
        self.eyes = _cascade("haarcascade_eye.xml") if align in ("rotate", "eyes") else None
        # align="learned": FER2013's framing predicted from the face (registrar_files: a model and its
        # metadata, None beside the model; None: the shipped models/face_register_int8.tflite), on `threads`
        self.registrar: FaceRegistrar | None = None
        if align.startswith("learned"):
            model, metadata = registrar_files or (None, None)
            self.registrar = FaceRegistrar(model, metadata, threads, turn=align == "learned+turn")
        self.detect_width = detect_width
        self.min_face = min_face
        self.margin = margin
        self.scale_factor = scale_factor
        self.align = align
        self.normalise = normalise
        self.pick = pick

    @classmethod
    def from_config(cls, face: Mapping[str, Any]) -> FaceDetector:
        """The detector the `face` section of the configuration describes."""
        registrar = (face["registrar"], face.get("registrar_metadata")) if face.get("registrar") else None
        return cls(face["detect_width"], face["min_face"], face["margin"], face["scale_factor"],
                   align=face["align"], normalise=face["normalise"],
                   pick=face["pick"], registrar_files=registrar, threads=face["threads"])

    def _detect(self, cascade: cv2.CascadeClassifier, image: np.ndarray) -> list[tuple[tuple[int, ...], float]]:
        """Boxes and their confidence (the cascade's level weight: how far past its last stage a window got)."""
        size = (self.min_face, self.min_face)
        boxes, _, weights = cascade.detectMultiScale3(image, self.scale_factor, 5, minSize=size,
                                                      outputRejectLevels=True)
        return [(tuple(int(v) for v in b), float(w)) for b, w in zip(boxes, np.ravel(weights))]

    def find(self, gray: np.ndarray) -> tuple[tuple[int, int, int, int] | None, str | None]:
        """The chosen face's (x, y, w, h) in `gray`'s coordinates, and the cascade that found it.

        `pick="confident"` takes the detection the cascade is surest of: a false positive in the background
        (a poster, a rocket on a badge) is often larger than the face but passes the cascade far less
        clearly. `pick="largest"` takes the largest box (the nearest face, if the detections are all faces).
        """
        scale = min(1.0, self.detect_width / gray.shape[1])
        small = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else gray
        small = cv2.equalizeHist(small)
        found, name = self._detect(self.frontal, small), "frontal"
        if not found:
            found, name = self._detect(self.profile, small), "profile"
            if not found:
                flipped = self._detect(self.profile, cv2.flip(small, 1))
                found = [((small.shape[1] - x - w, y, w, h), c) for (x, y, w, h), c in flipped]
        if not found:
            return None, None
        if self.pick == "largest":
            best = max(found, key=lambda f: f[0][2] * f[0][3])[0]
        else:
            best = max(found, key=lambda f: f[1])[0]
        x, y, w, h = (int(round(v / scale)) for v in best)
        return (x, y, w, h), name

    def eye_pair(self, gray: np.ndarray, box: Box) -> tuple[tuple[float, float], tuple[float, float]] | None:
        """Centres of the face's two eyes in `gray`'s coordinates (the image's left one first), from the eye
        cascade on the box's upper part; None when it finds no plausible pair.

        The box's upper 60 % is searched at a fixed 96-px width (cheap on a Pi; the 12-px minimum eye is then
        an eighth of the face). A pair must have one eye in each half of the box, eyes of similar size,
        25-60 % of the box apart and a tilt under 30 degrees; of several, the pair whose sizes agree best.
        """
        if self.eyes is None:
            return None
        x, y, w, h = box
        x0, y0 = max(0, x), max(0, y)
        roi = gray[y0:min(gray.shape[0], y + int(0.6 * h)), x0:min(gray.shape[1], x + w)]
        if roi.shape[0] < 8 or roi.shape[1] < 8:
            return None
        k = 96 / w
        roi = cv2.equalizeHist(cv2.resize(roi, None, fx=k, fy=k, interpolation=cv2.INTER_AREA))
        found = self.eyes.detectMultiScale(roi, 1.1, 3, minSize=(12, 12), maxSize=(48, 48))
        centres = [((ex + ew / 2) / k + x0, (ey + eh / 2) / k + y0, ew / k) for ex, ey, ew, eh in found]
        best, best_score = None, math.inf
        for lx, ly, lw in centres:
            for rx, ry, rw in centres:
                if not (lx < x + w / 2 <= rx):
                    continue
                distance, angle = math.hypot(rx - lx, ry - ly), math.degrees(math.atan2(ry - ly, rx - lx))
                if not 0.25 * w <= distance <= 0.6 * w or abs(angle) > 30 or max(lw, rw) > 1.6 * min(lw, rw):
                    continue
                score = abs(math.log(lw / rw))
                if score < best_score:
                    best, best_score = ((lx, ly), (rx, ry)), score
        return best

    def eye_angle(self, gray: np.ndarray, box: Box) -> float:
        """Degrees the eye line falls to the image's right (0 when no eye pair is found): the rotation that
        stands the face upright, as FER2013's faces stand (their eye line: median 0.0 degrees, half of them
        within 3.6; models/fer_framing.json)."""
        eyes = self.eye_pair(gray, box)
        if eyes is None:
            return 0.0
        (lx, ly), (rx, ry) = eyes
        return math.degrees(math.atan2(ry - ly, rx - lx))

    def square(self, gray: np.ndarray, box: Box) -> tuple[float, float, float, float]:
        """(centre x, centre y, side, angle) of the square to cut for the face in `box`: the Haar box mapped
        to FER2013's framing (or grown by the margin); with align "learned", moved and scaled (and with
        "learned+turn" turned) where the registrar predicts FER2013's frame; with "rotate", turned upright
        from the eyes, and with "eyes" framed by them too when they agree with the box."""
        cx, cy, side = frame_square(box, self.margin)
        if self.registrar is not None:
            return self.registrar.refine(lambda square, size: self.cut(gray, square, size, normalise=False),
                                         (cx, cy, side, 0.0))
        if self.align == "none":
            return cx, cy, side, 0.0
        eyes = self.eye_pair(gray, box)
        return square_from_eyes(eyes, (cx, cy, side), self.align == "eyes")

    def crop(self, gray: np.ndarray, box: tuple[int, int, int, int], size: int, angle: float = 0.0) -> np.ndarray:
        """The size x size face cut around `box` (`frame_square`), turned by `angle` degrees."""
        cx, cy, side = frame_square(box, self.margin)
        return self.cut(gray, (cx, cy, side, angle), size)

    def cut(self, gray: np.ndarray, square: tuple[float, float, float, float], size: int,
            normalise: bool = True) -> np.ndarray:
        """The size x size face in `square` (centre x, centre y, side, angle in degrees), padded at the frame
        edges by repeating the border, turned about its centre, normalised as configured unless not to.

        The square is first cut and shrunk with area averaging (no aliasing from a large face), then turned
        at the model's resolution; with an angle a square 1.5x as large is cut, so that turning brings real
        pixels into the corners.
        """
        cx, cy, side, angle = square
        grow = 1.5 if angle else 1.0
        big = int(round(size * grow))
        cut = side * big / size
        x0, y0, n = int(round(cx - cut / 2)), int(round(cy - cut / 2)), max(1, int(round(cut)))
        face = square_pixels(gray, x0, y0, n)
        face = cv2.resize(face, (big, big), interpolation=cv2.INTER_AREA if n >= big else cv2.INTER_LINEAR)
        if angle:
            centre = ((big - 1) / 2, (big - 1) / 2)
            turned = cv2.warpAffine(face, cv2.getRotationMatrix2D(centre, angle, 1.0), (big, big),
                                    flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            start = (big - size) // 2
            face = turned[start:start + size, start:start + size]
        return normalise_face(face, self.normalise) if normalise else face

    def face(self, gray: np.ndarray, box: Box, size: int) -> tuple[np.ndarray, float]:
        """The model's input for the face in `box` and the angle it was turned by."""
        square = self.square(gray, box)
        return self.cut(gray, square, size), square[3]


def square_from_eyes(eyes: tuple[tuple[float, float], tuple[float, float]] | None,
                     boxed: tuple[float, float, float], frame: bool,
                     template: tuple[float, float, float] = FER_EYES) -> tuple[float, float, float, float]:
    """The square (centre x, centre y, side, angle) for a face whose Haar framing is `boxed` (centre x,
    centre y, side) and whose eye centres are `eyes` (None: not found, the box's square unturned).

    The angle levels the eye line. With `frame`, the square is also the one in which the eyes land where
    `template` puts them (midpoint x, y and distance, fractions of the side), unless its size disagrees
    with the box's by more than EYES_AGREE (a nostril or an eyebrow taken for an eye).
    """
    cx, cy, side = boxed
    if eyes is None:
        return cx, cy, side, 0.0
    (lx, ly), (rx, ry) = eyes
    angle = math.atan2(ry - ly, rx - lx)
    if frame:
        mx, my, distance = template
        eye_side = math.hypot(rx - lx, ry - ly) / distance
        if 1 / EYES_AGREE <= eye_side / side <= EYES_AGREE:
            # from the eyes' midpoint to the square's centre: (0.5 - mx, 0.5 - my) sides along the face's axes
            ux, uy = (0.5 - mx) * eye_side, (0.5 - my) * eye_side
            c, s = math.cos(angle), math.sin(angle)
            cx, cy, side = (lx + rx) / 2 + ux * c - uy * s, (ly + ry) / 2 + ux * s + uy * c, eye_side
    return cx, cy, side, math.degrees(angle)


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
        face, angle = self.detector.face(gray, box, self.classifier.input_size)
        return FaceResult(box, self.views.predict(self.classifier, face)[0], cascade, angle)
