#!/usr/bin/env python3
"""Smoke check of the face pipeline on real, openly licensed photos bundled with installed packages:
scikit-image's astronaut portrait (Eileen Collins, NASA, public domain), smiling, and matplotlib's sample
portrait of Grace Hopper (US Navy, public domain), with a neutral face, glasses and a cap. Each as shot
and turned, mirrored, darkened, and shrunk below face.min_face (which must answer no face). Prints JSON:
for each photo, variant and crop option, the box, the cascade, the answer and the expected class's
probability.

A handful of views of two faces: it shows the path works on real photos, nothing about accuracy, and no
setting was chosen on them.

    pip install scikit-image matplotlib; python scripts/smoke_face_photos.py > models/fer_smoke.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from portraits import bundled_portraits  # noqa: E402

from pi.service import config  # noqa: E402
from pi.vision.face import FaceDetector, FacePipeline  # noqa: E402
from pi.vision.fer import ExpressionClassifier, FaceViews  # noqa: E402

# name -> face settings over the shipped ones; "default" is the shipped configuration, views included
OPTIONS: dict[str, dict[str, Any]] = {
    "margin_0.10 (shipped before)": {"margin": 0.1, "pick": "largest", "align": "none", "normalised_view": "none"},
    "default": {}, "default without the normalised view": {"normalised_view": "none"},
    "Haar box in FER2013's framing (align none)": {"align": "none"},
    "rotate": {"align": "rotate", "normalised_view": "none"},
    "eyes": {"align": "eyes", "normalised_view": "none"}}


def variants(bgr: np.ndarray) -> dict[str, np.ndarray]:
    h, w = bgr.shape[:2]
    turn = {f"turned_{a:+d}": cv2.warpAffine(bgr, cv2.getRotationMatrix2D((w / 2, h / 3), a, 1.0), (w, h),
                                             borderMode=cv2.BORDER_REPLICATE) for a in (-15, 15)}
    return {"as_shot": bgr, "mirrored": bgr[:, ::-1].copy(), **turn,
            "dark": np.clip(bgr.astype(np.float32) * 0.45, 0, 255).astype(np.uint8),
            "below_min_face_in_640x480": cv2.copyMakeBorder(cv2.resize(bgr, (240, 240), interpolation=cv2.INTER_AREA),
                                                   120, 120, 200, 200, cv2.BORDER_REPLICATE)}


def main() -> int:
    cv2.setNumThreads(1)
    classifier = ExpressionClassifier.from_metadata(ROOT / "models" / "fer_int8.tflite", ROOT / "models" / "fer.json")
    face = config.load(None)["face"]
    photos = bundled_portraits()
    if set(photos) != {"astronaut", "grace_hopper"}:
        raise SystemExit(f"only {sorted(photos)} of the bundled portraits could be read: are scikit-image and "
                         "matplotlib installed, with their sample data?")
    detectors = {oname: FaceDetector.from_config({**face, **kw}) for oname, kw in OPTIONS.items()}
    result: dict = {"face": {k: face[k] for k in ("margin", "align", "normalised_view", "pick")}, "photos": {}}
    for name, portrait in photos.items():
        expected = portrait.expression
        runs: dict = {}
        for vname, frame in variants(portrait.bgr).items():
            row = {}
            for oname, kw in OPTIONS.items():
                settings = {**face, **kw}
                views = FaceViews(normalised=settings["normalised_view"])
                r = FacePipeline(detectors[oname], classifier, views).analyse(frame)
                if r.probabilities is None:
                    row[oname] = {"box": None}
                    continue
                top = int(np.argmax(r.probabilities))
                row[oname] = {"box": list(r.box), "cascade": r.cascade, "answer": classifier.classes[top],
                              f"p_{expected}": round(float(r.probabilities[classifier.classes.index(expected)]), 3),
                              "turned_degrees": round(r.angle, 1)}
            runs[vname] = row
        result["photos"][name] = {"photo": portrait.source, "expected": expected, "runs": runs}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
