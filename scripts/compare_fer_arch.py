#!/usr/bin/env python3
"""Measure the candidate shapes of the FER hybrid side by side and print JSON (TensorFlow; `.[train]`).

Why the shipped shape (width 0.5, the 64-channel stage's stride removed, 48x48 input) and not the stock
network: for each candidate this reports parameters, multiply-accumulates per face, the ViT's token grid,
the last feature map, the training throughput on this machine (images/s, batch 64, the real train step)
and the single-thread float TFLite invoke latency. All candidates run in the same process, one after the
other, so their ratios are comparable even on a shared machine.

    python scripts/compare_fer_arch.py [--steps 30] [--no-tflite]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def macs(model) -> int:
    """Multiply-accumulates of one forward pass, counted from the layers' weights and output shapes."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += macs(layer)
            continue
        out = layer.output.shape
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            total += out[1] * out[2] * int(np.prod(layer.kernel.shape))
        elif isinstance(layer, keras.layers.Dense):
            total += int(np.prod(out[1:-1] or [1])) * int(np.prod(layer.kernel.shape))
        elif isinstance(layer, keras.layers.MultiHeadAttention):
            tokens, dim = out[1], out[2]
            projections = sum(int(np.prod(w.shape)) for w in layer.weights if len(w.shape) >= 2)
            total += tokens * projections + 2 * tokens * tokens * dim  # Q/K/V/out, then QK^T and AV
    return int(total)


def train_throughput(model, size: int, steps: int) -> float:
    import keras

    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (64, size, size, 1)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 7, 64), 7)
    for _ in range(3):  # trace and warm up
        model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return 64 * steps / (time.perf_counter() - start)


def tflite_invoke_ms(model, size: int, repeats: int = 200) -> float:
    import tensorflow as tf

    sys.path.insert(0, str(ROOT))
    from pi.vision.fer import load_interpreter_class

    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):  # stdout is the JSON
        model.export(tmp, format="tf_saved_model", input_signature=[tf.TensorSpec([1, size, size, 1], tf.float32)])
        flat = tf.lite.TFLiteConverter.from_saved_model(tmp).convert()
    interpreter_class, _ = load_interpreter_class()  # ai-edge-litert where installed, else TensorFlow's
    interpreter = interpreter_class(model_content=flat, num_threads=1)
    interpreter.allocate_tensors()
    index = interpreter.get_input_details()[0]["index"]
    interpreter.set_tensor(index, np.full((1, size, size, 1), 128, np.float32))
    times = []
    for i in range(repeats + 20):
        t0 = time.perf_counter()
        interpreter.invoke()
        if i >= 20:
            times.append(time.perf_counter() - t0)
    return round(1000 * statistics.median(times), 3)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30, help="timed training steps per candidate (0 skips)")
    p.add_argument("--no-tflite", dest="tflite", action="store_false", help="skip the invoke latency")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    sys.path.insert(0, str(ROOT / "scripts"))
    from fer_model import STAGES, STOCK_STAGES, build_hybrid

    candidates = {  # name: (input size, width, stages)
        "shipped: 48px, width 0.5, 64-stage stride 1": (48, 0.5, STAGES),
        "48px, width 0.5, stock strides": (48, 0.5, STOCK_STAGES),
        "48px, width 0.35, stock strides": (48, 0.35, STOCK_STAGES),
        "48px, width 1.0, 64-stage stride 1": (48, 1.0, STAGES),
        "96px, width 0.35, stock strides": (96, 0.35, STOCK_STAGES),
    }
    results = {}
    for name, (size, width, stages) in candidates.items():
        keras.utils.set_random_seed(0)
        model = build_hybrid(input_size=size, width=width, stages=stages)
        tokens = model.get_layer("vit_tokens").output.shape[1]
        last = model.get_layer("cnn_head").input.shape
        row = {"input": size, "width": width, "parameters": int(model.count_params()),
               "mmacs": round(macs(model) / 1e6, 1), "vit_tokens": int(tokens),
               "last_map": f"{last[1]}x{last[2]}"}
        if args.tflite:
            row["float_invoke_ms"] = tflite_invoke_ms(model, size)
        if args.steps:
            row["train_images_per_s"] = round(train_throughput(model, size, args.steps), 1)
        results[name] = row
        print(json.dumps({name: row}), file=sys.stderr, flush=True)
    print(json.dumps({"threads": "all cores for training, 1 for invoke", "candidates": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
