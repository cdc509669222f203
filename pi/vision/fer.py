"""The facial-expression classifier at run time: a TFLite model behind the fixed input contract.

Contract (models/fer.json): one grayscale face of `input_size` x `input_size` raw pixels 0..255 in, seven
probabilities out in the metadata's class order; normalisation lives inside the graph. An integer input
tensor is fed through its own scale/zero-point, so float and int8 files are interchangeable.

The interpreter comes from ai_edge_litert, else tflite_runtime, else tensorflow.lite (first found).
"""
from __future__ import annotations

import importlib
import json
import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pi.errors import ModelError, SlowKernelsWarning
from pi.vision.photometry import NORMALISATIONS, normalise_face

log = logging.getLogger(__name__)

# FER2013's label order (the datasets' `labels`, the shipped models' outputs: models/fer.json `classes`)
FER_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

RUNTIMES = (("ai_edge_litert.interpreter", "Interpreter"), ("tflite_runtime.interpreter", "Interpreter"),
            ("tensorflow", "lite.Interpreter"))


def load_interpreter_class(preferred: tuple[tuple[str, str], ...] = RUNTIMES):
    """The first importable TFLite Interpreter class and the module it came from."""
    missing = []
    for module_name, attr in preferred:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            missing.append(f"{module_name} ({exc.__class__.__name__})")
            continue
        target = module
        for part in attr.split("."):
            target = getattr(target, part)
        return target, module_name
    raise ModelError("no TFLite runtime found; install ai-edge-litert (or tflite-runtime). Tried: "
                     + ", ".join(missing))


def read_json(path: str | Path) -> dict:
    """A model's metadata file as a dict; ModelError naming the file when it is missing or not a JSON object."""
    try:
        meta = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ModelError(f"cannot read model metadata {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ModelError(f"model metadata {path} is not JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise ModelError(f"model metadata {path} is not a JSON object")
    return meta


def open_interpreter(model_path: Path, threads: int = 1) -> tuple[Any, bool]:
    """A TFLite interpreter with its tensors allocated, and whether XNNPACK runs it.

    XNNPACK refuses some int8 graphs (e.g. a requantisation scale below 2^-32 where a branch contributes
    next to nothing); the built-in kernels then run them, a few times slower, with a SlowKernelsWarning.
    """
    if not model_path.is_file():
        raise ModelError(f"model file {model_path} not found")
    interpreter_cls, _ = load_interpreter_class()
    try:
        interpreter = interpreter_cls(model_path=str(model_path), num_threads=threads)
        interpreter.allocate_tensors()
        return interpreter, True
    except (ValueError, RuntimeError) as exc:
        if "XNNPACK" not in str(exc):
            raise ModelError(f"cannot load {model_path}: {exc}") from None
        warnings.warn(f"{model_path.name}: XNNPACK refused the graph ({exc}); using built-in kernels",
                      SlowKernelsWarning, stacklevel=3)
    resolver = sys.modules[interpreter_cls.__module__].OpResolverType
    interpreter = interpreter_cls(model_path=str(model_path), num_threads=threads,
                                  experimental_op_resolver_type=resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    return interpreter, False


def read_metadata(path: str | Path) -> dict:
    meta = read_json(path)
    for key in ("classes", "input_size"):
        if key not in meta:
            raise ModelError(f"model metadata {path} lacks '{key}'")
    return meta


class ExpressionClassifier:
    """One interpreter per process; `predict(faces)` takes uint8 faces (N, S, S) and returns (N, 7)."""

    def __init__(self, model_path: str | Path, classes: tuple[str, ...], input_size: int = 48,
                 threads: int = 1):
        model_path = Path(model_path)
        self.runtime = load_interpreter_class()[1]
        self.interpreter, self.xnnpack = open_interpreter(model_path, threads)
        self.classes = tuple(classes)
        self.input_size = input_size
        self.path = model_path
        self._in = self.interpreter.get_input_details()[0]
        self._out = self.interpreter.get_output_details()[0]
        shape, shape_out = tuple(self._in["shape"].tolist()), tuple(self._out["shape"].tolist())
        if shape[1:3] != (input_size, input_size) or shape_out[-1] != len(self.classes):
            raise ModelError(f"{model_path} takes {shape} -> {shape_out}, but its metadata "
                             f"says {input_size}x{input_size} -> {len(self.classes)} classes")

    @classmethod
    def from_metadata(cls, model_path: str | Path, metadata_path: str | Path, threads: int = 1):
        meta = read_metadata(metadata_path)
        return cls(model_path, tuple(meta["classes"]), int(meta["input_size"]), threads)

    def _quantize_input(self, face: np.ndarray) -> np.ndarray:
        dtype = self._in["dtype"]
        x = face.astype(np.float32).reshape(self._in["shape"])
        if np.issubdtype(dtype, np.integer):
            scale, zero = self._in["quantization"]
            info = np.iinfo(dtype)
            return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
        return x.astype(dtype)

    def _dequantize_output(self, y: np.ndarray) -> np.ndarray:
        if np.issubdtype(self._out["dtype"], np.integer):
            scale, zero = self._out["quantization"]
            return (y.astype(np.float32) - zero) * scale
        return y.astype(np.float32)

    def predict(self, faces: np.ndarray) -> np.ndarray:
        """Class probabilities for each face (N x S x S, raw pixel values 0..255, uint8 or float)."""
        faces = np.asarray(faces)
        if faces.ndim == 2:
            faces = faces[None]
        if faces.shape[1:] != (self.input_size, self.input_size):
            raise ValueError(f"faces must be N x {self.input_size} x {self.input_size}, got {faces.shape}")
        out = np.empty((len(faces), len(self.classes)), np.float32)
        for i, face in enumerate(faces):
            self.interpreter.set_tensor(self._in["index"], self._quantize_input(face))
            self.interpreter.invoke()
            out[i] = self._dequantize_output(self.interpreter.get_tensor(self._out["index"])[0])
        return out


def zoom_matrix(n: int, scale: float, mirror: bool = False) -> np.ndarray:
    """The n x n matrix R with which R @ x zooms a length-n signal by `scale` about its centre.

    Bilinear, reflecting at the ends (edcba|abcde, OpenCV's BORDER_REFLECT, as training's zoom
    augmentation fills); `mirror` also reverses the output. A face's view is R_rows @ face @ R_cols.T, two
    small matrix products that numpy runs here and a TFLite graph runs just as well.
    """
    def reflect(j: int) -> int:
        while not 0 <= j < n:
            j = -j - 1 if j < 0 else 2 * n - j - 1
        return j

    centre = (n - 1) / 2
    matrix = np.zeros((n, n), np.float32)
    for i in range(n):
        u = centre + (i - centre) / scale
        j0 = int(np.floor(u))
        frac = u - j0
        matrix[i, reflect(j0)] += 1 - frac
        if frac > 0:
            matrix[i, reflect(j0 + 1)] += frac
    return matrix[::-1].copy() if mirror else matrix


@dataclass(frozen=True)
class FaceViews:
    """Test-time augmentation: classify several views of each face and average the probabilities.

    A view is the face zoomed by one of `scales` (1.0 is the face as cropped; > 1 zooms in about the
    centre), and with `flip` its mirror image too. The shipped model already averages its views inside the
    graph (models/fer.json: views_in_graph); views here add invokes on top, one per view. `normalised`
    (equalize or clahe) classifies every view a second time, photometrically normalised: the face as the
    camera saw it and with its contrast restored, for flat or dim light, at twice the invokes.
    """

    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    normalised: str = "none"

    def __post_init__(self):
        if not self.scales or any(not 0.5 <= s <= 2.0 for s in self.scales):
            raise ValueError(f"view scales must be a non-empty list within 0.5..2.0, got {list(self.scales)}")
        if self.normalised not in NORMALISATIONS:
            raise ValueError(f"normalised views must be one of {NORMALISATIONS}, got {self.normalised!r}")

    @staticmethod
    def parse_scales(text: str) -> tuple[float, ...]:
        """"0.9,1,1.1" -> (0.9, 1.0, 1.1), checked; ValueError naming the problem otherwise."""
        try:
            scales = tuple(float(v) for v in text.split(","))
        except ValueError:
            raise ValueError(f"view scales must be comma-separated numbers, got {text!r}") from None
        return FaceViews(scales).scales

    @property
    def zooms(self) -> int:
        """Zoomed and mirrored views of one face (the linear ones, which a graph can bake in)."""
        return len(self.scales) * (2 if self.flip else 1)

    @property
    def count(self) -> int:
        """Invokes per face: the zooms, twice over with a normalised view."""
        return self.zooms * (1 if self.normalised == "none" else 2)

    def matrices(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Row and column resampling matrices of the zoomed and mirrored views, (zooms, H, H) and (zooms, W, W):
        view k = R[k] @ face @ C[k].T. A normalised view is no linear map and has none."""
        rows, cols = [], []
        for scale in self.scales:
            for mirror in ((False, True) if self.flip else (False,)):
                rows.append(zoom_matrix(height, scale))
                cols.append(zoom_matrix(width, scale, mirror))
        return np.stack(rows), np.stack(cols)

    def iter_views(self, faces: np.ndarray):
        """Each view of (N, H, W) faces in turn, as (N, H, W) float32: the zooms of the faces as cut, then,
        with `normalised`, the zooms of the normalised faces; one zoomed view in memory at a time."""
        variants = [np.asarray(faces, np.float32)]
        if variants[0].ndim == 2:  # one face
            variants[0] = variants[0][None]
        if self.normalised != "none" and len(variants[0]):
            pixels = np.clip(np.rint(variants[0]), 0, 255).astype(np.uint8)
            variants.append(np.stack([normalise_face(f, self.normalised) for f in pixels]).astype(np.float32))
        for variant in variants:
            if self.scales == (1.0,) and not self.flip:  # the face as cropped: no resampling to do
                yield variant
                continue
            rows, cols = self.matrices(*variant.shape[1:])
            for r, c in zip(rows, cols):
                yield r @ variant @ c.T

    def views(self, faces: np.ndarray) -> np.ndarray:
        """(N, H, W) faces in, (count, N, H, W) float32 views out."""
        return np.stack(list(self.iter_views(faces)))

    def predict(self, classifier: ExpressionClassifier, faces: np.ndarray) -> np.ndarray:
        """Probabilities (N, classes) averaged over the views of each face."""
        faces = np.asarray(faces)
        if faces.ndim == 2:
            faces = faces[None]
        return np.mean([classifier.predict(v) for v in self.iter_views(faces)], axis=0)


# The views that scripts/export_fer.py bakes into the shipped graph unless told otherwise: the best of the
# view sets measured (models/fer_training.md, stage 5). Distillation targets average the same views.
GRAPH_VIEWS = FaceViews((0.9, 1.0, 1.1), flip=True)


def scales_argument(text: str) -> tuple[float, ...]:
    """argparse type for a comma-separated list of view zooms (`fer-eval --scales`, export_fer.py)."""
    import argparse

    try:
        return FaceViews.parse_scales(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
