#!/usr/bin/env python3
"""Train the face registrar (pi/vision/registration.py): a small CNN that says where FER2013 would have
framed a face, from the inner part of a square around it. Writes the int8 TFLite model and its metadata;
prints the metadata as JSON.

Self-supervised on FER2013 Training: each 48x48 face is its own ground truth. A square is drawn at random
against the face's frame (shift in sides, log scale and turn, spread wider than the Haar box strays on the
proxy, models/fer_proxy.json `geometry`), its inner part cut at the registrar's input size, and the network
learns the inverse: the frame's offset from the square. The light is jittered (gain, gradient, gamma, sensor
noise, blur) and faces are mirrored with their targets, so the answer comes from the face's shape. Validation
is on PublicTest faces under a fixed draw; the residual spread against the drawn spread is reported per
target. Draws depend on (seed, epoch) only.

    python scripts/train_face_registrar.py --train ../shared/datasets/fer2013/fer2013_training.npz \
        --val ../shared/datasets/fer2013/fer2013_publictest.npz   # about 10-15 min on 2 cores
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pi.vision.registration import CROP, relative_map, standardise  # noqa: E402

FER_DIR = "../shared/datasets/fer2013"  # where the command in the metadata expects the data
TARGETS = ("shift_x", "shift_y", "log_scale", "turn_radians")
# the drawn offsets: normal spreads (shift in sides, log scale) and the turn's uniform half-range in degrees,
# wider than the Haar framing strays on the proxy (models/fer_proxy.json `geometry`). shift_y_mean -0.01 came
# from the proxy's centre offset when it was measured half a face pixel off; measured right its median is
# -0.002 sides, but a retrain with 0.0 and a wider draw (shift sd 0.075, log scale sd 0.2, 30 epochs) did
# no better on the proxy (README), so the shipped registrar and this draw stay as they are.
DRAW = {"shift_sd": 0.065, "shift_y_mean": -0.01, "shift_limit": 0.2, "log_scale_sd": 0.18,
        "log_scale_limit": 0.45, "turn_degrees": 16.0}
TARGET_SCALE = (0.065, 0.065, 0.18, math.radians(8.0))  # the network's outputs are the targets over these


def draw_offsets(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 4) random offsets of FER2013's frame against a square: shift x, shift y, log scale, turn."""
    d = DRAW
    shift_x = np.clip(rng.normal(0.0, d["shift_sd"], n), -d["shift_limit"], d["shift_limit"])
    shift_y = np.clip(rng.normal(d["shift_y_mean"], d["shift_sd"], n), -d["shift_limit"], d["shift_limit"])
    log_scale = np.clip(rng.normal(0.0, d["log_scale_sd"], n), -d["log_scale_limit"], d["log_scale_limit"])
    turn = np.radians(rng.uniform(-d["turn_degrees"], d["turn_degrees"], n))
    return np.stack([shift_x, shift_y, log_scale, turn], 1)


def inner_grid(size: int, inner: float) -> np.ndarray:
    """3x3 map from the registrar's size x size input to the square's 48-px crop: its inner share."""
    k = inner * CROP / size
    offset = (CROP - 1) / 2 - k * (size - 1) / 2
    return np.array([[k, 0.0, offset], [0.0, k, offset], [0.0, 0.0, 1.0]])


def inner_crop(face: np.ndarray, offset: np.ndarray, size: int, inner: float, blur: float = 0.0) -> np.ndarray:
    """What the registrar sees, float32 size x size, of a 48x48 face whose frame lies at `offset` (shift x,
    shift y, log scale, turn) against the square: the square's inner share, cut from the face's own pixels
    (borders reflected, as the expression model's training fills them), blurred by `blur` px first."""
    to_face = np.linalg.inv(relative_map(*offset)) @ inner_grid(size, inner)  # the square in the face's pixels
    pixels = face.astype(np.float32)
    if blur > 0.15:
        pixels = cv2.GaussianBlur(pixels, (0, 0), blur)
    return cv2.warpAffine(pixels, to_face[:2], (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT)


def make_examples(faces: np.ndarray, rng: np.random.Generator, size: int,
                  inner: float) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (N, size, size, 1) standardised and targets (N, 4) over TARGET_SCALE for (N, 48, 48) faces."""
    n = len(faces)
    offsets = draw_offsets(rng, n)
    blur = rng.uniform(0.0, 0.7, n)
    crops = np.stack([inner_crop(faces[i], offsets[i], size, inner, float(blur[i])) for i in range(n)])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    direction = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    ramp = np.clip(1 + rng.uniform(0, 0.4, (n, 1, 1)) * (xx * np.cos(direction) + yy * np.sin(direction)), 0.4, 1.6)
    crops = np.clip(crops * ramp * rng.uniform(0.6, 1.3, (n, 1, 1)), 0, 255)
    crops = 255 * (crops / 255) ** rng.uniform(0.7, 1.4, (n, 1, 1))
    crops += rng.normal(0, 1, crops.shape) * rng.uniform(0, 5, (n, 1, 1))
    mirror = rng.random(n) < 0.5
    crops[mirror] = crops[mirror][:, :, ::-1]
    offsets[mirror, 0] *= -1
    offsets[mirror, 3] *= -1
    return standardise(crops), (offsets / TARGET_SCALE).astype(np.float32)


def build(size: int) -> Any:  # a tf.keras.Model (TensorFlow is imported lazily)
    """Seven 3x3 convolutions (16-96 channels, three halvings), flattened so that where a feature sits
    survives, one hidden layer, four outputs. About 360 k parameters, 6 M multiply-adds."""
    import tensorflow as tf

    layers = tf.keras.layers
    inp = layers.Input((size, size, 1))
    x = inp
    for filters, stride in ((16, 1), (32, 2), (32, 1), (64, 2), (64, 1), (96, 2), (96, 1)):
        x = layers.Conv2D(filters, 3, stride, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(96, activation="relu")(x)
    return tf.keras.Model(inp, layers.Dense(len(TARGETS))(x))


def to_int8(model: Any, calibration: np.ndarray) -> bytes:
    """Full-integer int8 weights and activations, float32 input and output (the registrar standardises its
    input in numpy and reads four numbers back)."""
    import tensorflow as tf

    def representative():
        for x in calibration:
            yield [x[None]]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def residuals(predicted: np.ndarray, targets: np.ndarray) -> dict:
    """Per target: spread of the drawn offsets and of what is left after the prediction."""
    scale = np.asarray(TARGET_SCALE)
    drawn, left = targets * scale, (targets - predicted) * scale
    return {name: {"drawn_sd": round(float(drawn[:, j].std()), 4), "residual_sd": round(float(left[:, j].std()), 4)}
            for j, name in enumerate(TARGETS)}


def invoke_tflite(model_bytes: bytes, inputs: np.ndarray) -> np.ndarray:
    from pi.vision.fer import load_interpreter_class

    interpreter_cls, _ = load_interpreter_class()
    interpreter = interpreter_cls(model_content=model_bytes, num_threads=1)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    results = []
    for x in inputs:
        interpreter.set_tensor(inp["index"], x[None])
        interpreter.invoke()
        results.append(interpreter.get_tensor(out["index"])[0])
    return np.array(results)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=Path, required=True, help="FER2013 Training .npz")
    p.add_argument("--val", type=Path, required=True, help="FER2013 PublicTest .npz (a fixed draw of 2,000 faces)")
    p.add_argument("--out", type=Path, default=ROOT / "models", help="folder for face_register_int8.tflite and .json")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--size", type=int, default=32, help="input side in pixels")
    p.add_argument("--inner", type=float, default=0.7,
                   help="share of the square the input covers (0.85 learned the training borders: README)")
    p.add_argument("--limit", type=int, default=0, help="train on this many faces (0: all), for a quick check")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    import tensorflow as tf

    t0 = time.time()
    cv2.setNumThreads(1)
    tf.random.set_seed(args.seed)
    faces = np.load(args.train)["images"]
    if args.limit:
        faces = faces[np.random.default_rng(args.seed).permutation(len(faces))[:args.limit]]
    val_faces = np.load(args.val)["images"][:2000]
    x_val, y_val = make_examples(val_faces, np.random.default_rng((args.seed, 99)), args.size, args.inner)
    model = build(args.size)
    batch = 256
    steps = args.epochs * max(1, len(faces) // batch)
    model.compile(tf.keras.optimizers.AdamW(tf.keras.optimizers.schedules.CosineDecay(2e-3, steps), weight_decay=1e-4),
                  loss=tf.keras.losses.Huber(1.0))
    history = []
    for epoch in range(args.epochs):
        rng = np.random.default_rng((args.seed, epoch))
        x, y = make_examples(faces[rng.permutation(len(faces))], rng, args.size, args.inner)
        fit = model.fit(x, y, batch_size=batch, epochs=1, verbose=0, validation_data=(x_val, y_val))
        history.append({"epoch": epoch, "loss": round(fit.history["loss"][0], 4),
                        "val_loss": round(fit.history["val_loss"][0], 4)})
        print(json.dumps(history[-1]), file=sys.stderr, flush=True)
    model_bytes = to_int8(model, x_val[:300])
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "face_register_int8.tflite"
    path.write_bytes(model_bytes)
    meta = {
        "name": "face_register", "file": path.name, "bytes": len(model_bytes),
        "sha256": hashlib.sha256(model_bytes).hexdigest(),
        "description": "where FER2013 would have framed a face, from the inner part of a square around it "
                       "(pi/vision/registration.py); outputs are the frame's shift x, shift y (sides), log scale "
                       "and turn (radians) against the square, each over target_scale",
        "input_size": args.size, "inner_fraction": args.inner, "targets": list(TARGETS),
        "target_scale": list(TARGET_SCALE), "draw": DRAW, "parameters": int(model.count_params()),
        "training": {"command": f"python scripts/train_face_registrar.py --train {FER_DIR}/{args.train.name} "
                                f"--val {FER_DIR}/{args.val.name} --epochs {args.epochs} --size {args.size} "
                                f"--inner {args.inner} --seed {args.seed}"
                                + (f" --limit {args.limit}" if args.limit else ""),
                     "train": args.train.name, "faces": int(len(faces)), "epochs": args.epochs, "seed": args.seed,
                     "history": history, "seconds": round(time.time() - t0, 1)},
        "validation": {"data": args.val.name, "faces": int(len(val_faces)),
                       "float": residuals(model.predict(x_val, verbose=0, batch_size=512), y_val),
                       "int8": residuals(invoke_tflite(model_bytes, x_val), y_val)},
    }
    (args.out / "face_register.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(json.dumps(meta, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
