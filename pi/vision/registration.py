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

from pi.errors import ModelError, RegistrarError
from pi.resources import REGISTRAR_MODEL, registrar_metadata_for, shipped
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


def _positive(value: object, key: str, path: str | Path) -> float:
    """`value` (the metadata's `key`) as a positive finite number, or a RegistrarError naming the key."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise RegistrarError(f"registrar metadata {path}: '{key}' must be a positive number, got {value!r}")
    return float(value)


def read_registrar_metadata(path: str | Path) -> tuple[int, float, np.ndarray, np.ndarray]:
    """A registrar's input size, inner fraction, target scale (4) and prediction limits (4: the trained
    draw's shift, shift, log scale and turn in radians), each checked; a RegistrarError names the key."""
    try:
        meta = read_json(path)
    except ModelError as exc:
        raise RegistrarError(str(exc)) from None
    size = meta.get("input_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise RegistrarError(f"registrar metadata {path}: 'input_size' must be a whole number of pixels (8 or "
                             f"more), got {size!r}")
    inner = _positive(meta.get("inner_fraction"), "inner_fraction", path)
    if inner > 1:
        raise RegistrarError(f"registrar metadata {path}: 'inner_fraction' is the share of the square the "
                             f"network sees, in (0, 1], got {inner}")
    scale = meta.get("target_scale")
    if not isinstance(scale, list) or len(scale) != 4:
        raise RegistrarError(f"registrar metadata {path}: 'target_scale' needs 4 numbers (shift x, shift y, "
                             f"log scale, turn), got {scale!r}")
    draw = meta.get("draw")
    if not isinstance(draw, dict):
        raise RegistrarError(f"registrar metadata {path}: 'draw' (the trained offsets' limits) is missing")
    shift, log_scale, turn = (_positive(draw.get(key), key, path)
                              for key in ("shift_limit", "log_scale_limit", "turn_degrees"))
    return (size, inner, np.array([_positive(v, "target_scale", path) for v in scale]),
            np.array([shift, shift, log_scale, math.radians(turn)]))


class FaceRegistrar:
    """Where FER2013 would frame the face in a square: `refine(cut, square)` for a detector's cut function.

    `turn` also applies the predicted turn (otherwise only the shift and scale, the square staying as
    upright as it came). Predictions are held to the range the network was trained on (the metadata's
    `draw` limits): past them it extrapolates, and a wild answer must not throw the face out of the crop.
    """

    def __init__(self, model_path: str | Path | None = None, metadata_path: str | Path | None = None,
                 threads: int = 1, *, turn: bool = False):
        """None: the shipped models/face_register_int8.tflite; metadata None: the face_register.json beside the
        model (pi.resources.registrar_metadata_for)."""
        model_path = Path(model_path) if model_path is not None else shipped(REGISTRAR_MODEL)
        metadata_path = Path(metadata_path) if metadata_path is not None else registrar_metadata_for(model_path)
        try:
            self.interpreter, self.xnnpack = open_interpreter(model_path, threads)
        except ModelError as exc:
            raise RegistrarError(str(exc)) from None
        self.input_size, self.inner, self.target_scale, self.limits = read_registrar_metadata(metadata_path)
        size = self.input_size
        self._in = self.interpreter.get_input_details()[0]
        self._out = self.interpreter.get_output_details()[0]
        shape_in, shape_out = tuple(self._in["shape"].tolist()), tuple(self._out["shape"].tolist())
        if shape_in != (1, size, size, 1) or shape_out != (1, 4) or self._in["dtype"] != np.float32:
            raise RegistrarError(f"{model_path} takes {shape_in} {self._in['dtype'].__name__} -> {shape_out}, but a "
                                 f"registrar takes float32 (1, {size}, {size}, 1) crops to (1, 4) numbers")
        self.turn = turn

    def offset(self, crop: np.ndarray) -> np.ndarray:
        """(shift x, shift y, log scale, turn in radians) of FER2013's frame against the square whose inner
        part `crop` is (input_size x input_size, uint8 or float), within the trained limits."""
        self.interpreter.set_tensor(self._in["index"], standardise(crop[None]))
        self.interpreter.invoke()
        raw = self.interpreter.get_tensor(self._out["index"])[0].astype(np.float64) * self.target_scale
        return np.clip(raw, -self.limits, self.limits)

    def refine(self, cut: Callable[[Square, int], np.ndarray], square: Square) -> Square:
        """The square FER2013 would have cut, from `square` (the Haar box's framing); `cut(square, size)`
        returns that square of the frame at size x size (FaceDetector.cut on the frame)."""
        cx, cy, side, angle = square
        shift_x, shift_y, log_scale, turn = self.offset(cut((cx, cy, side * self.inner, angle), self.input_size))
        return map_square(square_map(square) @ relative_map(shift_x, shift_y, log_scale, turn if self.turn else 0.0))
