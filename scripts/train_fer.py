#!/usr/bin/env python3
"""Train the MobileNetV2+ViT FER2013 hybrid (TensorFlow only; `pip install .[train]`).

Long job: run it in the background; it checkpoints every epoch and resumes where it stopped when started
again with the same --out directory and arguments.

    nohup python scripts/train_fer.py --train ../shared/datasets/fer2013/fer2013_training.npz \
        --val ../shared/datasets/fer2013/fer2013_publictest.npz --out build/fer_run > build/fer_train.log 2>&1 &

Writes to --out: backup/ (resume state), best.keras (best PublicTest accuracy), history.csv (the curve)
and summary.json (command line, seed, epochs, best epoch and accuracy, wall time).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", required=True, type=Path, help="training .npz (images uint8 Nx48x48, labels)")
    p.add_argument("--val", required=True, type=Path, help="validation .npz used for model selection")
    p.add_argument("--out", required=True, type=Path, help="run directory (checkpoints, curve, summary)")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate after warm-up")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=int, default=2)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--class-weight-power", type=float, default=0.25,
                   help="class weight = (N / (K n_c))^power; 0 disables, 1 is full inverse frequency")
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--exclude-norms-from-decay", action="store_true",
                   help="no weight decay on LayerNorm/BatchNorm scales, biases, position embeddings and the "
                        "fusion alpha (stage 1 ran without it and decay killed its ViT MLP units; the shipped "
                        "stage 2 used it, see models/fer_training.md)")
    p.add_argument("--init-from", type=Path,
                   help="warm start: copy the weights of this .keras model (same architecture) before training, "
                        "reviving dead ViT MLP units; the schedule starts afresh (a warm restart)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=0, help="TF intra-op threads (0 = all cores)")
    return p.parse_args(argv)


def load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(path)
    images = data["images"].astype(np.float32)[..., None]
    labels = data["labels"].astype(np.int64)
    return images, labels


def warm_start(model, source, images: np.ndarray, unit_stats, seed: int, threshold: float = 1e-4) -> dict:
    """Copy `source`'s weights into `model` layer by layer, then give every dead ViT MLP unit fresh input
    weights and a zero output row.

    The zero row keeps the network's function unchanged at the start (a dead unit contributed nothing
    either), while the fresh input weights let the unit fire and learn again. Returns {block: revived}.
    """
    for layer in model.layers:
        if layer.weights:
            layer.set_weights(source.get_layer(layer.name).get_weights())
    rng = np.random.default_rng(seed)
    revived = {}
    for b, (peak, _mean) in unit_stats(model, images).items():
        dead = peak < threshold
        if not dead.any():
            continue
        mlp1, mlp2 = model.get_layer(f"vit{b}_mlp1"), model.get_layer(f"vit{b}_mlp2")
        k1, b1 = mlp1.get_weights()
        k2, b2 = mlp2.get_weights()
        limit = np.sqrt(6.0 / (k1.shape[0] + k1.shape[1]))  # Glorot uniform, Dense's default
        k1[:, dead] = rng.uniform(-limit, limit, (k1.shape[0], int(dead.sum())))
        b1[dead] = 0.0
        k2[dead, :] = 0.0
        mlp1.set_weights([k1, b1])
        mlp2.set_weights([k2, b2])
        revived[b] = int(dead.sum())
    return revived


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fer_model import CLASSES, build_hybrid, mlp_unit_stats

    keras.utils.set_random_seed(args.seed)
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    x_train, y_train = load_npz(args.train)
    x_val, y_val = load_npz(args.val)
    counts = np.bincount(y_train, minlength=len(CLASSES))
    class_weight = None
    if args.class_weight_power > 0:
        w = (len(y_train) / (len(CLASSES) * counts)) ** args.class_weight_power
        w = w / np.average(w, weights=counts)  # keep the mean loss scale unchanged
        class_weight = {i: float(v) for i, v in enumerate(w)}

    augment = keras.Sequential([
        keras.layers.RandomFlip("horizontal"),
        keras.layers.RandomRotation(10 / 360, fill_mode="reflect"),
        keras.layers.RandomZoom((-0.1, 0.1), fill_mode="reflect"),
        keras.layers.RandomTranslation(0.1, 0.1, fill_mode="reflect"),
        keras.layers.RandomBrightness(0.15, value_range=(0, 255)),
        keras.layers.RandomContrast(0.2, value_range=(0, 255)),
    ], name="augment")

    n_classes = len(CLASSES)

    def to_onehot(x, y, *rest):
        return (x, tf.one_hot(y, n_classes), *rest)

    sample_w = np.ones(len(y_train), np.float32) if class_weight is None else \
        np.array([class_weight[int(c)] for c in y_train], np.float32)
    train_ds = (tf.data.Dataset.from_tensor_slices((x_train, y_train, sample_w))
                .shuffle(len(y_train), seed=args.seed, reshuffle_each_iteration=True)
                .batch(args.batch, drop_remainder=True)
                .map(lambda x, y, w: (tf.clip_by_value(augment(x, training=True), 0, 255), y, w),
                     num_parallel_calls=tf.data.AUTOTUNE)
                .map(to_onehot).prefetch(tf.data.AUTOTUNE))
    val_ds = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(256).map(to_onehot).cache()

    steps = len(y_train) // args.batch
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=1e-6, decay_steps=max(1, steps * (args.epochs - args.warmup_epochs)), alpha=1e-5 / args.lr,
        warmup_target=args.lr, warmup_steps=steps * args.warmup_epochs)
    model = build_hybrid(width=args.width)
    if args.init_from and not (args.out / "backup").exists():  # on resume the backup holds the weights
        revived = warm_start(model, keras.models.load_model(args.init_from), x_train[:2000, ..., 0],
                             mlp_unit_stats, seed=args.seed)
        print(f"warm start from {args.init_from}: revived dead MLP units per ViT block {revived}", flush=True)
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=args.weight_decay)
    if args.exclude_norms_from_decay:
        optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias", "pos", "alpha_logit"])
    model.compile(optimizer=optimizer,
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=args.label_smoothing),
                  metrics=["accuracy"])

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.time()

        def on_epoch_end(self, epoch, logs=None):
            logs["epoch_seconds"] = time.time() - self.t0
            logs["alpha"] = float(keras.ops.sigmoid(model.get_layer("fusion").logit))

    started = time.time()
    model.fit(train_ds, validation_data=val_ds, epochs=args.epochs, verbose=2, callbacks=[
        keras.callbacks.BackupAndRestore(str(args.out / "backup")),
        EpochTimer(),
        keras.callbacks.ModelCheckpoint(str(args.out / "best.keras"), monitor="val_accuracy", mode="max",
                                        save_best_only=True),
        keras.callbacks.CSVLogger(str(args.out / "history.csv"), append=True),
    ])

    import csv
    with open(args.out / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    best = max(rows, key=lambda r: float(r["val_accuracy"]))
    summary = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": {k: None if v is None else str(v) for k, v in vars(args).items()},
        "class_weight": class_weight,
        "epochs_completed": len(rows),
        "best_epoch": int(best["epoch"]) + 1,
        "best_val_accuracy": float(best["val_accuracy"]),
        "final_val_accuracy": float(rows[-1]["val_accuracy"]),
        "final_train_accuracy": float(rows[-1]["accuracy"]),
        "seconds_this_process": round(time.time() - started, 1),
        "seconds_all_epochs": round(sum(float(r.get("epoch_seconds", 0) or 0) for r in rows), 1),
        "parameters": model.count_params(),
        "final_alpha": float(rows[-1].get("alpha", "nan") or "nan"),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
