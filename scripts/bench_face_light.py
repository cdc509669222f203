#!/usr/bin/env python3
"""The face model under bad light, with and without a normalised view averaged in. Prints JSON.

FER2013 PublicTest faces, each condition applied to the 48x48 crop the model sees: as they are; contrast
squeezed about the face's mean to 0.6x and 0.4x (flat light); dimmed to 0.35x with sensor noise (a dark
room: little signal, the same noise); washed out towards white to 0.45x (back light, overexposure); and a
gamma of 1.8 (shadows crushed). Every condition is classified with the views `none` (the crop as cut),
`clahe` and `equalize` (FaceViews.normalised: the crop's answer averaged with its normalised view's), on
the same faces and the same noise draw. This is what chose face.normalised_view; the scene-level check is
scripts/bench_face_proxy.py.

    python scripts/bench_face_light.py --data ../shared/datasets/fer2013/fer2013_publictest.npz \
        > models/fer_light.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pi.metrics import report  # noqa: E402
from pi.vision.evaluation import load_dataset  # noqa: E402
from pi.vision.fer import ExpressionClassifier, FaceViews  # noqa: E402
from pi.vision.photometry import NORMALISATIONS  # noqa: E402


def squeeze(faces: np.ndarray, k: float) -> np.ndarray:
    """Contrast scaled by k about each face's mean grey."""
    f = faces.astype(np.float32)
    mean = f.mean(axis=(1, 2), keepdims=True)
    return np.clip(mean + k * (f - mean), 0, 255).astype(np.uint8)


def conditions(seed: int) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    def dim(faces: np.ndarray) -> np.ndarray:
        noise = np.random.default_rng(seed).normal(0, 3, faces.shape)
        return np.clip(faces * 0.35 + noise, 0, 255).astype(np.uint8)

    return {
        "as_is": lambda f: f,
        "contrast_0.6": lambda f: squeeze(f, 0.6),
        "contrast_0.4": lambda f: squeeze(f, 0.4),
        "dim_0.35_noise_3": dim,
        "washed_out_0.45": lambda f: np.clip(255 - (255 - f.astype(np.float32)) * 0.45, 0, 255).astype(np.uint8),
        "gamma_1.8": lambda f: (255 * (f / 255.0) ** 1.8).astype(np.uint8),
    }


def scores(r: dict) -> dict:
    """Accuracy, macro-F1 and the lowest class recall of a pi.metrics.report, rounded for the JSON."""
    return {"accuracy": round(r["accuracy"], 4), "macro_f1": round(r["macro_f1"], 4),
            "lowest_recall": round(min(m["recall"] for m in r["per_class"].values()), 4)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="FER2013 PublicTest .npz")
    p.add_argument("--limit", type=int, default=None, help="a stratified sample of N faces")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", type=Path, default=ROOT / "models" / "fer_int8.tflite")
    args = p.parse_args(argv)
    t0 = time.time()
    classifier = ExpressionClassifier.from_metadata(args.model, ROOT / "models" / "fer.json", 1)
    images, labels = load_dataset(args.data, args.limit, args.seed)
    result: dict = {"data": args.data.name, "model": args.model.name, "n": int(len(labels)), "conditions": {}}
    for name, light in conditions(args.seed).items():
        faces = light(images)
        row = {}
        for views in NORMALISATIONS:
            r = report(labels, FaceViews(normalised=views).predict(classifier, faces).argmax(1), classifier.classes)
            row[views] = scores(r)
        result["conditions"][name] = row
    result["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
