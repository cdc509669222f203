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

Whether the set-up is fair to real faces (which have hair, ears and a room past FER2013's edge) is checked
on real, public-domain portraits bundled with installed packages: each is cut by the pipeline's own crop
(FER2013's framing from its Haar box in the full photo), shrunk to 48x48 and measured the same way. A
faithful set-up gives back the framing it was cut with (`portraits`, with w over FER2013's median w).

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

sys.path.insert(0, str(ROOT / "scripts"))

from portraits import bundled_portraits  # noqa: E402

from pi.vision.face import FER_FRAME_IN_HAAR_BOX, FaceDetector  # noqa: E402

UP = 4


def padded_upscale(face: np.ndarray, border: int = cv2.BORDER_REPLICATE) -> tuple[np.ndarray, int, int]:
    """The 48x48 face upscaled UP x (bicubic) and padded by a quarter of its side: (scene, side, pad)."""
    side, pad = face.shape[1] * UP, face.shape[1] * UP // 4
    big = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
    return cv2.copyMakeBorder(big, pad, pad, pad, pad, border, value=int(big.mean())), side, pad


def haar_box_px(detector: FaceDetector, scene: np.ndarray, smallest: int = 0) -> tuple[int, int, int, int] | None:
    """The frontal cascade's largest box in `scene`'s pixels (its equalisation, scale factor, 5 neighbours,
    boxes of at least `smallest` px and of the detector's minimum face); None when it finds none."""
    smallest = max(detector.min_face, smallest)
    found = detector.frontal.detectMultiScale(cv2.equalizeHist(scene), detector.scale_factor, 5,
                                              minSize=(smallest, smallest))
    if len(found) == 0:
        return None
    x, y, w, h = (int(v) for v in max(found, key=lambda b: b[2] * b[3]))
    return x, y, w, h


def haar_box(detector: FaceDetector, face: np.ndarray, border: int = cv2.BORDER_REPLICATE,
             min_share: float = 0.0) -> tuple[float, float, float, float] | None:
    """The frontal cascade's largest box on the padded, upscaled face, as fractions of the face's frame
    (x, y, w, h); None when it finds none. `min_share` skips boxes under that share of the frame (the
    search at small scales is most of the cost, and a box that small is not the face)."""
    scene, side, pad = padded_upscale(face, border)
    box = haar_box_px(detector, scene, int(min_share * side))
    return None if box is None else in_frame(box, side, pad)


def in_frame(box: tuple[int, int, int, int], side: int, pad: int) -> tuple[float, float, float, float]:
    """A box in the padded scene's pixels as fractions of the face's frame."""
    x, y, w, h = box
    return (x - pad) / side, (y - pad) / side, w / side, h / side


def portraits() -> dict[str, np.ndarray]:
    """The bundled real portraits (scripts/portraits.py) in grey, each also mirrored."""
    grey = {f"{name}: {p.source}": cv2.cvtColor(p.bgr, cv2.COLOR_BGR2GRAY)
            for name, p in bundled_portraits().items()}
    return {**grey, **{f"{name}, mirrored": np.ascontiguousarray(g[:, ::-1]) for name, g in grey.items()}}


def portrait_round_trip(detector: FaceDetector, gray: np.ndarray) -> dict | None:
    """The face of a real photo cut as the pipeline cuts it (48x48), then measured as FER2013's faces are:
    where its Haar box falls, and its w over FER2013's median w (1.0: the set-up gives back the framing)."""
    box, _ = detector.find(gray)
    if box is None:
        return None
    face = detector.crop(gray, box, 48)
    found = haar_box(detector, face)
    if found is None:
        return {"box_in_photo": list(box), "box_in_cut_face": None}
    return {"box_in_photo": list(box), "box_in_cut_face": [round(v, 4) for v in found],
            "w_over_fer2013": round(found[2] / FER_FRAME_IN_HAAR_BOX[2], 4)}


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
    result: dict = {"data": str(args.data.name), "n": int(args.n), "seed": args.seed, "upscale": UP,
                    "pad_fraction": 0.25, "box_fields": ["x", "y", "w", "h"], "paddings": {}}
    for name, border in (("replicate", cv2.BORDER_REPLICATE), ("mean_grey", cv2.BORDER_CONSTANT)):
        boxes, angles, eyes = [], [], []
        for i in pick:
            scene, side, pad = padded_upscale(images[i], border)
            box = haar_box_px(detector, scene)
            if box is None:
                continue
            boxes.append(in_frame(box, side, pad))
            if name == "replicate":
                pair = detector.eye_pair(scene, box)
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
    result["portraits"] = {name: portrait_round_trip(FaceDetector(), gray) for name, gray in portraits().items()}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
