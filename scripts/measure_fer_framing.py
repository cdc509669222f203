#!/usr/bin/env python3
"""Measure FER2013's own framing: where the pipeline's Haar box falls on upscaled FER2013 faces. Prints JSON.

FER2013's 48x48 faces were cut by an automatic registration, so a real face cropped for the model should be
framed the same way. Each face is upscaled 4x (bicubic, as a camera's face is smooth at that size), padded
by a quarter of its side on every edge so the detector may place its box past the frame's edge, and given
to the pipeline's frontal cascade (its equalisation, scale factor 1.1, 5 neighbours, 48 px minimum). The box
is reported as fractions of the 48x48 frame: median x, y, w, h with quartiles, for two paddings (the edge
pixels repeated, and the face's mean grey), since what lies past FER2013's edge is unknown. The eye cascade
then gives the tilt of the eye line on the same faces (how upright FER2013's faces are) and where the eyes
sit in the frame: their midpoint and distance as fractions of the frame, a framing that does not depend on
what surrounds the face.

    python scripts/measure_fer_framing.py --data ../shared/datasets/fer2013/fer2013_training.npz \
        > models/fer_framing.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pi.vision.face import FaceDetector  # noqa: E402

UP = 4


def stats(values: np.ndarray) -> dict:
    q = np.percentile(values, [25, 50, 75], axis=0)
    return {"median": [round(float(v), 4) for v in q[1]], "p25": [round(float(v), 4) for v in q[0]],
            "p75": [round(float(v), 4) for v in q[2]]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="FER2013 Training .npz (not a test split)")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cv2.setNumThreads(1)
    data = np.load(args.data)
    images = data["images"]
    pick = np.sort(np.random.default_rng(args.seed).choice(len(images), args.n, replace=False))
    detector = FaceDetector(align="rotate")
    side, pad = 48 * UP, 12 * UP
    result: dict = {"data": str(args.data.name), "n": int(args.n), "seed": args.seed, "upscale": UP,
                    "pad_fraction": pad / side, "box_fields": ["x", "y", "w", "h"], "paddings": {}}
    for name, border in (("replicate", cv2.BORDER_REPLICATE), ("mean_grey", cv2.BORDER_CONSTANT)):
        boxes, angles, eyes = [], [], []
        for i in pick:
            face = cv2.resize(images[i], (side, side), interpolation=cv2.INTER_CUBIC)
            scene = cv2.copyMakeBorder(face, pad, pad, pad, pad, border, value=int(face.mean()))
            small = cv2.equalizeHist(scene)
            found = detector.frontal.detectMultiScale(small, detector.scale_factor, 5,
                                                      minSize=(detector.min_face, detector.min_face))
            if len(found) == 0:
                continue
            x, y, w, h = (int(v) for v in max(found, key=lambda b: b[2] * b[3]))
            boxes.append(((x - pad) / side, (y - pad) / side, w / side, h / side))
            if name == "replicate":
                pair = detector.eye_pair(scene, (x, y, w, h))
                if pair is not None:
                    (lx, ly), (rx, ry) = pair
                    angles.append(float(np.degrees(np.arctan2(ry - ly, rx - lx))))
                    eyes.append((((lx + rx) / 2 - pad) / side, ((ly + ry) / 2 - pad) / side,
                                 float(np.hypot(rx - lx, ry - ly)) / side))
        entry = {"found": round(len(boxes) / args.n, 4), **stats(np.array(boxes))}
        if angles:
            a = np.array(angles)
            entry["eye_pairs_found"] = round(len(a) / max(1, len(boxes)), 4)
            entry["eye_line_degrees"] = {"median": round(float(np.median(a)), 2),
                                         "median_abs": round(float(np.median(np.abs(a))), 2),
                                         "p90_abs": round(float(np.percentile(np.abs(a), 90)), 2)}
            entry["eyes"] = {"fields": ["midpoint_x", "midpoint_y", "distance"], **stats(np.array(eyes))}
        result["paddings"][name] = entry
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
