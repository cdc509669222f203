#!/usr/bin/env python3
"""Export the trained FER hybrid to TFLite (float32 and full-integer int8), measure both on the validation
split, and write models/fer_float.tflite, models/fer_int8.tflite and models/fer.json.

    python scripts/export_fer.py --run build/fer_run --train ../shared/datasets/fer2013/fer2013_training.npz \
        --val ../shared/datasets/fer2013/fer2013_publictest.npz --out models

Several `--run`s export an ensemble in one graph: every network classifies the same views and the
probabilities are averaged, so the runtime still makes one invoke per face.

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
sys.path.insert(0, str(ROOT))
from pi.vision.fer import GRAPH_VIEWS, FaceViews, scales_argument  # noqa: E402  (numpy only: the resampling the graph and runtime share)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, nargs="+", required=True,
                   help="training run directory (best.keras, history.csv); several make an ensemble in one graph")
    p.add_argument("--train", type=Path, required=True, help="training .npz (int8 calibration images)")
    p.add_argument("--val", type=Path, required=True, help="validation .npz for the reported figures")
    p.add_argument("--out", type=Path, default=ROOT / "models")
    p.add_argument("--calibration", type=int, default=1000, help="representative images for int8")
    p.add_argument("--view-scales", type=scales_argument, default=GRAPH_VIEWS.scales, metavar="S,S,...",
                   help="zooms averaged inside the shipped graph (1.0 alone: no zoom views)")
    p.add_argument("--no-view-flip", dest="view_flip", action="store_false",
                   help="do not also average the mirrored views inside the graph")
    p.add_argument("--seed", type=int, default=1234)
    return p.parse_args(argv)


def convert(saved_model: Path, calibration: np.ndarray | None) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if calibration is not None:
        full_integer(converter, calibration)
    return converter.convert()


def full_integer(converter, calibration: np.ndarray) -> None:
    """Set a TFLite converter to full-integer int8 (input and output too), calibrated on raw faces (N, H, W)."""
    import tensorflow as tf

    def representative():
        for image in calibration:
            yield [image[None, ..., None].astype(np.float32)]

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8


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


def with_views(models: list, views):
    """Wrap `models` so that one invoke classifies every view of the face and averages the probabilities.

    Test-time augmentation inside the graph: the views are `FaceViews.matrices` products (the same
    resampling the runtime's FaceViews uses), batched through each network, and the mean of all their
    probabilities (views, then networks) is the output. The input contract does not change.
    """
    import keras
    from keras import ops

    size = int(models[0].input_shape[1])
    if views.normalised != "none":
        raise ValueError("a normalised view is no linear map and cannot be baked into the graph")
    rows, cols = views.matrices(size, size)
    count = views.zooms
    # Both products as plain matrix products with a constant right-hand side (FULLY_CONNECTED in TFLite):
    # int8 BATCH_MATMUL with the constant on the left and a broadcast batch came out wrong from the
    # converter (every pixel saturated). Columns: one (W, V*W) matrix for all views; rows: a block-diagonal
    # (V*H, V*H) matrix, one block R_v.T per view.
    col_weights = np.concatenate([c.T for c in cols], axis=1)
    row_weights = np.zeros((count * size, count * size), np.float32)
    for v, r in enumerate(rows):
        row_weights[v * size:(v + 1) * size, v * size:(v + 1) * size] = r.T

    class ViewStack(keras.layers.Layer):
        def call(self, x):
            a = ops.matmul(x[..., 0], col_weights)  # (B, H, V*W): a[h, v, j] = sum_w x[h, w] C_v[j, w]
            a = ops.transpose(ops.reshape(a, (-1, size, count, size)), (0, 3, 2, 1))  # (B, W, V, H)
            b = ops.matmul(ops.reshape(a, (-1, size, count * size)), row_weights)  # (B, W, V*H)
            b = ops.transpose(ops.reshape(b, (-1, size, count, size)), (0, 2, 3, 1))  # (B, V, H, W)
            return ops.reshape(b, (-1, size, size, 1))  # (B * views, H, W, 1)

    class ViewMean(keras.layers.Layer):
        def call(self, p):
            return ops.mean(ops.reshape(p, (-1, count, p.shape[-1])), axis=1)

    inputs = keras.Input((size, size, 1), name="pixels")
    stacked = ViewStack(name="views")(inputs) if count > 1 else inputs
    means = [ViewMean(name=f"view_mean_{i}")(m(stacked)) if count > 1 else m(stacked) for i, m in enumerate(models)]
    output = means[0] if len(means) == 1 else keras.layers.Average(name="ensemble_mean")(means)
    return keras.Model(inputs, output, name="fer_views")


def load_member(run: Path, index: int, calibration: np.ndarray, val_images: np.ndarray):
    """One network of the shipped graph: its best.keras with dead MLP branches folded, and its facts."""
    import keras

    model = keras.models.load_model(run / "best.keras")
    summary_path = run / "summary.json"
    training = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    width = float(training.get("args", {}).get("width", 0.5))
    arch = training.get("arch", "hybrid")  # scripts/gpu_slot.py also trains the seed papers' models
    original = model
    # the fold rebuilds ours (build_hybrid); a seed model is exported as trained
    model, folded_blocks = fold_dead_mlps(model, calibration, width) if arch == "hybrid" else (model, [])
    if folded_blocks:
        check = val_images[:1000][..., None].astype("float32")
        before, after = original.predict(check, verbose=0), model.predict(check, verbose=0)
        print(f"{run}: folded dead MLP branches of ViT blocks {folded_blocks}: max probability change "
              f"{np.abs(before - after).max():.2e}, "
              f"argmax agreement {np.mean(before.argmax(1) == after.argmax(1)):.4f}")
    model.name = f"member{index}"  # nested networks need distinct names in the ensemble graph
    with open(run / "history.csv") as fh:
        history = list(csv.DictReader(fh))
    facts = {
        "run": run.name,
        "width": width,
        "parameters": int(model.count_params()),
        "arch": arch,
        "fusion_alpha": round(float(keras.ops.convert_to_numpy(keras.ops.sigmoid(model.get_layer("fusion").logit))), 4)
        if any(layer.name == "fusion" for layer in model.layers) else None,
        "folded_dead_mlp_blocks": folded_blocks,
        "training": {
            "command": training.get("command"),
            "warm_start_from": training.get("args", {}).get("init_from"),  # the run it continued, if any
            "epochs_completed": len(history),
            "best_epoch": training.get("best_epoch"),
            "best_val_accuracy_keras": training.get("best_val_accuracy"),
            "seconds_all_epochs": training.get("seconds_all_epochs"),
            "curve_val_accuracy": [round(float(r["val_accuracy"]), 4) for r in history],
            "curve_train_accuracy": [round(float(r["accuracy"]), 4) for r in history],
        },
    }
    return model, facts


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    sys.path.insert(0, str(ROOT / "scripts"))
    import fer_model  # noqa: F401  (registers the custom layers for loading)

    from pi.metrics import report
    from pi.vision.evaluation import load_dataset
    from pi.vision.fer import ExpressionClassifier

    args.out.mkdir(parents=True, exist_ok=True)
    train = np.load(args.train)["images"]
    rng = np.random.default_rng(args.seed)
    calibration = train[rng.choice(len(train), args.calibration, replace=False)]
    images, labels = load_dataset(args.val)  # read once: folding check, views check and the reported figures
    loaded = [load_member(run, i, calibration, images) for i, run in enumerate(args.run)]
    models, members = [m for m, _ in loaded], [f for _, f in loaded]
    size = int(models[0].input_shape[1])
    if any(int(m.input_shape[1]) != size for m in models):
        raise SystemExit("the runs disagree on the input size: " + ", ".join(str(m.input_shape) for m in models))

    views = FaceViews(args.view_scales, args.view_flip)
    shipped = with_views(models, views) if views.count > 1 or len(models) > 1 else models[0]
    if shipped is not models[0]:  # the graph must be exactly the runtime's FaceViews averaged over the networks
        check = images[:64]
        expected = np.mean([m.predict(v[..., None], verbose=0) for m in models for v in views.views(check)], axis=0)
        gap = float(np.abs(shipped.predict(check[..., None].astype("float32"), verbose=0) - expected).max())
        print(f"views and networks in the graph vs FaceViews: max probability difference {gap:.2e}")
        if gap > 1e-4:
            raise SystemExit(f"the in-graph views disagree with FaceViews (max difference {gap:.2e})")
    with tempfile.TemporaryDirectory() as tmp:
        def export(m, name):
            saved = Path(tmp) / name
            m.export(str(saved), format="tf_saved_model",
                     input_signature=[tf.TensorSpec([1, size, size, 1], tf.float32, name="pixels")])
            return saved

        files = {"float": args.out / "fer_float.tflite", "int8": args.out / "fer_int8.tflite"}
        saved = export(shipped, "shipped")
        files["float"].write_bytes(convert(saved, None))
        files["int8"].write_bytes(convert(saved, calibration))
        # each network alone, one view per invoke: measured for reference, not shipped
        reference = {f"int8_single_view_{m.name}" if len(models) > 1 else "int8_single_view": m for m in models}
        for name, m in reference.items():
            files[name] = Path(tmp) / f"{name}.tflite"
            files[name].write_bytes(convert(export(m, name), calibration))

        classes = list(fer_model.CLASSES)
        measured, predictions, xnnpack = {}, {}, {}
        for name, path in files.items():
            clf = ExpressionClassifier(path, tuple(classes), size, threads=2)
            predictions[name] = clf.predict(images).argmax(1)
            r = report(labels, predictions[name], classes)
            measured[name] = {"accuracy": round(r["accuracy"], 4), "macro_f1": round(r["macro_f1"], 4),
                              "per_class_recall": {c: v["recall"] for c, v in r["per_class"].items()}}
            if name == "int8":
                measured[name]["confusion"] = r["confusion"]
                details = clf._in
                int8_input = {"dtype": str(np.dtype(details["dtype"])), "scale": float(details["quantization"][0]),
                              "zero_point": int(details["quantization"][1])}
            if name in ("float", "int8"):
                xnnpack[name] = clf.xnnpack
        for name in reference:
            files.pop(name).unlink()

    networks = "one network" if len(models) == 1 else f"an ensemble of {len(models)} networks (probabilities averaged)"
    meta = {
        "name": "fer_mnv2_vit",
        "description": "MobileNetV2 (width 0.5, 64-channel stage stride 1) + 2-block ViT on the 6x6 map, "
                       "alpha-fused; trained on FER2013 Training, selected on PublicTest; each invoke runs "
                       f"{networks} over {views.count} views of the face (views_in_graph, members)",
        "classes": classes,
        "input_size": size,
        "input_contract": "one grayscale face, raw pixels 0..255 as float32 [1,48,48,1]; normalisation is "
                          "inside the graph; an integer input uses its own scale/zero-point",
        "int8_input_quantization": int8_input,
        "files": {name: {"path": f"models/{p.name}", "bytes": p.stat().st_size} for name, p in files.items()},
        "xnnpack_accepts": xnnpack,
        "parameters": sum(m["parameters"] for m in members),
        "validation_split": f"{args.val.name} ({len(labels)} images)",
        "publictest": measured,
        "views_in_graph": {"scales": list(views.scales), "flip": views.flip, "count": views.count},
        "int8_agreement_with_float": round(float(np.mean(predictions["int8"] == predictions["float"])), 4),
        "members": members,
        "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    (args.out / "fer.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps({k: meta[k] for k in ("files", "publictest", "int8_agreement_with_float")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
