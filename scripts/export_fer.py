#!/usr/bin/env python3
"""Export the trained FER hybrid to TFLite (float32 and full-integer int8), measure both on the validation
split, and write models/fer_float.tflite, models/fer_int8.tflite and models/fer.json.

    python scripts/export_fer.py --run build/fer_run --train ../shared/datasets/fer2013/fer2013_training.npz \
        --val ../shared/datasets/fer2013/fer2013_publictest.npz --out models

The input contract is fixed: raw grayscale pixels 0..255 in (normalisation is inside the graph), a batch of
one (a dynamic batch adds stray ops), seven probabilities out. int8 calibration uses training images only.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="training run directory (best.keras, history.csv)")
    p.add_argument("--train", type=Path, required=True, help="training .npz (int8 calibration images)")
    p.add_argument("--val", type=Path, required=True, help="validation .npz for the reported figures")
    p.add_argument("--out", type=Path, default=ROOT / "models")
    p.add_argument("--calibration", type=int, default=1000, help="representative images for int8")
    p.add_argument("--seed", type=int, default=1234)
    return p.parse_args(argv)


def convert(saved_model: Path, calibration: np.ndarray | None) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if calibration is not None:
        def representative():
            for image in calibration:
                yield [image[None, ..., None].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


def fold_dead_mlps(model, images: np.ndarray, width: float, threshold: float = 1e-4):
    """Replace transformer MLP branches whose ReLU units never fire with the constant they compute.

    AdamW's weight decay can kill every unit of a small MLP; the branch then adds a constant (the second
    layer's bias), and its near-zero activations give a requantisation scale XNNPACK refuses. The fold is
    exact up to the dead activations (checked on the calibration images). Returns (model, folded blocks).
    """
    from fer_model import build_hybrid, mlp_unit_stats

    dead = {}
    for b, (peak, mean) in mlp_unit_stats(model, images).items():
        if float(peak.max()) < threshold:
            kernel, bias = model.get_layer(f"vit{b}_mlp2").get_weights()
            dead[b] = bias + mean @ kernel
    if not dead:
        return model, []
    folded = build_hybrid(input_size=int(model.input_shape[1]), width=width, constant_mlp_blocks=frozenset(dead))
    for layer in folded.layers:
        if layer.name.endswith("_mlp_const"):
            layer.set_weights([dead[int(layer.name[3:].split("_")[0])]])
        elif layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return folded, sorted(dead)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    sys.path.insert(0, str(ROOT / "scripts"))
    sys.path.insert(0, str(ROOT))
    import fer_model  # noqa: F401  (registers the custom layers for loading)
    from pi.config import SCHEMA
    from pi.fer import ExpressionClassifier, FaceViews
    from pi.fer_eval import load_dataset
    from pi.metrics import report

    model = keras.models.load_model(args.run / "best.keras")
    size = int(model.input_shape[1])
    args.out.mkdir(parents=True, exist_ok=True)
    train = np.load(args.train)["images"]
    rng = np.random.default_rng(args.seed)
    calibration = train[rng.choice(len(train), args.calibration, replace=False)]
    training_args = json.loads((args.run / "summary.json").read_text()).get("args", {}) \
        if (args.run / "summary.json").exists() else {}
    original = model
    model, folded_blocks = fold_dead_mlps(model, calibration, float(training_args.get("width", 0.5)))
    if folded_blocks:
        check = np.load(args.val)["images"][:1000][..., None].astype("float32")
        before, after = original.predict(check, verbose=0), model.predict(check, verbose=0)
        print(f"folded dead MLP branches of ViT blocks {folded_blocks}: max probability change "
              f"{np.abs(before - after).max():.2e}, argmax agreement {np.mean(before.argmax(1) == after.argmax(1)):.4f}")

    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "saved_model"
        model.export(str(saved), format="tf_saved_model",
                     input_signature=[tf.TensorSpec([1, size, size, 1], tf.float32, name="pixels")])
        files = {"float": args.out / "fer_float.tflite", "int8": args.out / "fer_int8.tflite"}
        files["float"].write_bytes(convert(saved, None))
        files["int8"].write_bytes(convert(saved, calibration))

    classes = list(fer_model.CLASSES)
    images, labels = load_dataset(args.val)
    # the model alone, with its mirror image, and with the pipeline's default views (config face.*)
    view_sets = {"": FaceViews(), "_flip": FaceViews(flip=True),
             "_views": FaceViews(tuple(SCHEMA["face"]["view_scales"].default), SCHEMA["face"]["flip_average"].default)}
    measured, predictions, xnnpack = {}, {}, {}
    for name, path in files.items():
        clf = ExpressionClassifier(path, tuple(classes), size, threads=2)
        for suffix, views in view_sets.items():
            probs = views.predict(clf, images)
            key = name + suffix
            predictions[key] = probs.argmax(1)
            r = report(labels, predictions[key], classes)
            measured[key] = {"accuracy": round(r["accuracy"], 4), "macro_f1": round(r["macro_f1"], 4),
                             "per_class_recall": {c: v["recall"] for c, v in r["per_class"].items()}}
            if key == "int8":
                measured[key]["confusion"] = r["confusion"]
        details = clf._in
        xnnpack[name] = clf.xnnpack
        if name == "int8":
            int8_input = {"dtype": str(np.dtype(details["dtype"])), "scale": float(details["quantization"][0]),
                          "zero_point": int(details["quantization"][1])}

    with open(args.run / "history.csv") as fh:
        history = list(csv.DictReader(fh))
    summary_path = args.run / "summary.json"
    training = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    alpha = float(keras.ops.convert_to_numpy(keras.ops.sigmoid(model.get_layer("fusion").logit)))
    meta = {
        "name": "fer_mnv2_vit",
        "description": "MobileNetV2 (width 0.5, 64-channel stage stride 1) + 2-block ViT on the 6x6 map, "
                       "alpha-fused; trained on FER2013 Training, selected on PublicTest",
        "classes": classes,
        "input_size": size,
        "input_contract": "one grayscale face, raw pixels 0..255 as float32 [1,48,48,1]; normalisation is "
                          "inside the graph; an integer input uses its own scale/zero-point",
        "int8_input_quantization": int8_input,
        "files": {name: {"path": f"models/{p.name}", "bytes": p.stat().st_size} for name, p in files.items()},
        "xnnpack_accepts": xnnpack,
        "folded_dead_mlp_blocks": folded_blocks,
        "parameters": int(model.count_params()),
        "fusion_alpha": round(alpha, 4),
        "validation_split": "FER2013 PublicTest (3589 images)",
        "publictest": measured,
        "pipeline_views": {"scales": list(view_sets["_views"].scales), "flip": view_sets["_views"].flip,
                           "invokes": view_sets["_views"].count},
        "int8_agreement_with_float": round(float(np.mean(predictions["int8"] == predictions["float"])), 4),
        "training": {
            "command": training.get("command"),
            "epochs_completed": len(history),
            "best_epoch": training.get("best_epoch"),
            "best_val_accuracy_keras": training.get("best_val_accuracy"),
            "seconds_all_epochs": training.get("seconds_all_epochs"),
            "curve_val_accuracy": [round(float(r["val_accuracy"]), 4) for r in history],
            "curve_train_accuracy": [round(float(r["accuracy"]), 4) for r in history],
        },
        "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    (args.out / "fer.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps({k: meta[k] for k in ("files", "publictest", "int8_agreement_with_float")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
