"""Learned registration: reframe a detected face the way FER2013 framed its faces, from the face itself.

The Haar box says where a face is, but not how FER2013 would have framed it: from face to face the box's
side strays from FER2013's frame by about 16 % (the proxy's spread, models/fer_proxy.json `geometry`), and
the expression model loses points for it (README: face pipeline). A small CNN (models/face_register_int8.tflite,
trained by scripts/train_face_registrar.py) looks at the inner part of the current square (the eyes, nose
and mouth, never the square's edge, where a synthetic or padded border would give the answer away) and
predicts where FER2013's frame lies relative to it: a shift, a change of scale and a turn. It learned that
on FER2013's own training faces, each moved, scaled and turned at random away from its frame, so its target
is exactly the framing the expression model was trained on.

Geometry: a square is (centre x, centre y, side, angle), the centre in pixel-edge coordinates as
FaceDetector.cut takes it, the angle in degrees the cut face is turned (cut's convention). `square_map`
turns a square into the 3x3 map from the model's crop pixels to the frame's pixel centres, and
`map_square` back; the prediction composes onto that map.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pi.errors import ModelError
from pi.resources import REGISTRAR_METADATA, REGISTRAR_MODEL, shipped
from pi.vision.fer import open_interpreter, read_json

Square = tuple[float, float, float, float]  # centre x, centre y, side, angle in degrees
CROP = 48  # the square's own pixel grid, FER2013's 48x48 frame


def square_map(square: Square, size: int = CROP) -> np.ndarray:
    """3x3 map from a size x size crop's pixel centres to the frame's, for the square as FaceDetector.cut
    cuts it (turned by its angle about its centre)."""
    cx, cy, side, angle = square
    k = side / size
    a = math.radians(angle)
    c, s = k * math.cos(a), k * math.sin(a)
    centre = (size - 1) / 2
    return np.array([[c, -s, cx - 0.5 - c * centre + s * centre],
                     [s, c, cy - 0.5 - s * centre - c * centre],
                     [0.0, 0.0, 1.0]])


def map_square(m: np.ndarray, size: int = CROP) -> Square:
    """The square whose `square_map` is the similarity `m` (its inverse)."""
    centre = (size - 1) / 2
    k = math.hypot(m[0, 0], m[1, 0])
    cx, cy = m[:2, :2] @ (centre, centre) + m[:2, 2] + 0.5
    return float(cx), float(cy), k * size, math.degrees(math.atan2(m[1, 0], m[0, 0]))


def relative_map(shift_x: float, shift_y: float, log_scale: float, turn_radians: float,
                 size: int = CROP) -> np.ndarray:
    """3x3 map from the true frame's crop pixels to the current square's: the true frame is shifted by
    (shift_x, shift_y) sides, larger by exp(log_scale) and turned by `turn_radians` against the square."""
    k = math.exp(log_scale)
    c, s = k * math.cos(turn_radians), k * math.sin(turn_radians)
    centre = (size - 1) / 2
    return np.array([[c, -s, centre - c * centre + s * centre + size * shift_x],
                     [s, c, centre - s * centre - c * centre + size * shift_y],
                     [0.0, 0.0, 1.0]])


def standardise(crops: np.ndarray) -> np.ndarray:
    """(N, S, S) crops to zero mean and unit contrast each, (N, S, S, 1) float32: the registrar sees the
    face's shape, not its exposure. The +4 grey levels keep a flat patch from being blown up into noise."""
    x = np.asarray(crops, np.float32)
    mean = x.mean(axis=(1, 2), keepdims=True)
    spread = x.std(axis=(1, 2), keepdims=True) + 4.0
    return ((x - mean) / spread)[..., None]


class FaceRegistrar:
    """Where FER2013 would frame the face in a square: `refine(cut, square)` for a detector's cut function.

    `turn` also applies the predicted turn (otherwise only the shift and scale, the square staying as
    upright as it came); `passes` refines the refined square again.
    """

    def __init__(self, model_path: str | Path | None = None, metadata_path: str | Path | None = None,
                 threads: int = 1, *, turn: bool = False, passes: int = 1):
        """None: the shipped models/face_register_int8.tflite and models/face_register.json."""
        model_path = Path(model_path) if model_path is not None else shipped(REGISTRAR_MODEL)
        metadata_path = metadata_path if metadata_path is not None else shipped(REGISTRAR_METADATA)
        meta = read_json(metadata_path)
        try:
            self.input_size = int(meta["input_size"])
            self.inner = float(meta["inner_fraction"])
            self.target_scale = np.asarray(meta["target_scale"], np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"registrar metadata {metadata_path} lacks or mangles {exc}") from None
        if self.target_scale.shape != (4,) or not 0 < self.inner <= 1:
            raise ModelError(f"registrar metadata {metadata_path}: target_scale needs 4 numbers and "
                             f"inner_fraction a share in (0, 1]")
        if passes < 1:
            raise ValueError(f"passes must be at least 1, got {passes}")
        self.interpreter, self.xnnpack = open_interpreter(model_path, threads)
        self._in = self.interpreter.get_input_details()[0]
        self._out = self.interpreter.get_output_details()[0]
        if (tuple(self._in["shape"][1:3]) != (self.input_size, self.input_size)
                or self._out["shape"][-1] != 4 or self._in["dtype"] != np.float32):
            raise ModelError(f"{model_path} takes {tuple(self._in['shape'])} {self._in['dtype'].__name__} -> "
                             f"{tuple(self._out['shape'])}, but a registrar takes float32 "
                             f"{self.input_size}x{self.input_size} crops to 4 numbers")
        self.turn = turn
        self.passes = passes

    def offset(self, crop: np.ndarray) -> np.ndarray:
        """(shift x, shift y, log scale, turn in radians) of FER2013's frame against the square whose inner
        part `crop` is (input_size x input_size, uint8 or float)."""
        self.interpreter.set_tensor(self._in["index"], standardise(crop[None]))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._out["index"])[0].astype(np.float64) * self.target_scale

    def refine(self, cut: Callable[[Square, int], np.ndarray], square: Square) -> Square:
        """The square FER2013 would have cut, from `square` (the Haar box's framing); `cut(square, size)`
        returns that square of the frame at size x size (FaceDetector.cut on the frame)."""
        for _ in range(self.passes):
            cx, cy, side, angle = square
            shift_x, shift_y, log_scale, turn = self.offset(cut((cx, cy, side * self.inner, angle), self.input_size))
            square = map_square(square_map(square) @ relative_map(shift_x, shift_y, log_scale,
                                                                turn if self.turn else 0.0))
        return square
