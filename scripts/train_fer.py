#!/usr/bin/env python3
"""Train the MobileNetV2+ViT FER2013 hybrid with Keras 3 (`pip install .[train]`).

Any Keras backend trains it: TensorFlow on this machine's CPU, JAX on a lent GPU
(`KERAS_BACKEND=jax`). OpenCV augments each epoch on the host and `fit` gets plain arrays, so no tf.data
pipeline is needed. The saved .keras models are backend-neutral and scripts/export_fer.py converts them
with TensorFlow.

Long job: run it in the background; it checkpoints every epoch and resumes where it stopped when started
again with the same --out directory and arguments.

    nohup python scripts/train_fer.py --train ../shared/datasets/fer2013/fer2013_training.npz \
        --val ../shared/datasets/fer2013/fer2013_publictest.npz --out build/fer_run > build/fer_train.log 2>&1 &

Writes to --out: last.keras (the latest epoch with its optimizer state: the resume point, and the annealed
weights once the run completes), best.keras (best PublicTest accuracy), history.csv (the curve) and
summary.json (command line, seed, epochs, best epoch and accuracy, wall time).
"""
from __future__ import annotations

import argparse
import csv
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
    p.add_argument("--teacher", type=Path, nargs="+", default=[], metavar="MODEL.keras",
                   help="distil: train towards a blend of the label and these networks' probabilities, averaged "
                        "over the shipped graph's views of each clean training face (computed once, cached in --out)")
    p.add_argument("--teacher-weight", type=float, default=0.5,
                   help="share of the teachers' probabilities in each target (the label keeps the rest)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=0, help="TF intra-op threads (0 = all cores)")
    args = p.parse_args(argv)
    if not 0.0 <= args.teacher_weight <= 1.0:
        p.error(f"--teacher-weight must lie within 0..1, got {args.teacher_weight}")
    return args


def load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(path)
    images = data["images"].astype(np.float32)[..., None]
    labels = data["labels"].astype(np.int64)
    return images, labels


def _read_history(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path) as fh:
        return list(csv.DictReader(fh))


def _accelerator() -> str:
    """What the epochs ran on, for the summary (a GPU run and a CPU run differ ~50x in epoch time)."""
    import keras

    if keras.backend.backend() == "jax":
        import jax
        return ", ".join(sorted({d.device_kind for d in jax.devices()}))
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf
        gpus = tf.config.list_physical_devices("GPU")
        return ", ".join(g.name for g in gpus) or "CPU"
    return keras.backend.backend()


def _allocator() -> str:
    """The malloc this process runs on. TensorFlow's per-step activations are larger than glibc's mmap
    threshold, so glibc maps and unmaps them every step and the page faults keep the CPU in the kernel
    (25-40 % of the CPU time here); tcmalloc keeps the memory (3 %; models/fer_train_bench.json)."""
    maps = Path("/proc/self/maps")
    loaded = maps.read_text() if maps.exists() else ""
    return next((name for name in ("tcmalloc", "jemalloc") if name in loaded), "system malloc")


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


def blend_targets(onehot: np.ndarray, teacher: np.ndarray, weight: float) -> np.ndarray:
    """Training targets for distillation: (1 - weight) * the label + weight * the teachers' probabilities.

    The label keeps its share because the teachers learnt from these very faces and are overconfident on
    them; the teachers' share carries what a one-hot label cannot: which other expressions a face resembles,
    and a softer target where FER2013's label is doubtful.
    """
    if onehot.shape != teacher.shape:
        raise ValueError(f"labels {onehot.shape} and teacher probabilities {teacher.shape} differ in shape")
    if not np.allclose(teacher.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError("teacher probabilities must sum to 1 for every face")
    return ((1.0 - weight) * onehot + weight * teacher).astype(np.float32)


def cached_probabilities(cache: Path, teachers: list[str], faces: int) -> np.ndarray | None:
    """The cached teacher probabilities if `cache` was made by these teachers for this many faces, else None."""
    if not cache.exists():
        return None
    with np.load(cache) as saved:
        if list(saved["teachers"]) == teachers and saved["probabilities"].shape[0] == faces:
            return saved["probabilities"]
    print(f"{cache} was made for other teachers or faces: recomputing", flush=True)
    return None


def teacher_probabilities(paths: list[Path], faces: np.ndarray, cache: Path) -> np.ndarray:
    """The teachers' mean probabilities (N, classes) over the shipped graph's views of each clean training face.

    Computed once and cached in the run directory with the teachers' paths: a resumed run reads it back,
    other teachers or other faces recompute it. Derived from the dataset, so it stays out of the repository
    like the data.
    """
    names = [str(p) for p in paths]
    cached = cached_probabilities(cache, names, len(faces))
    if cached is not None:
        return cached
    import keras

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from pi.vision.fer import GRAPH_VIEWS

    def view_mean(teacher) -> np.ndarray:
        return np.mean([teacher.predict(v[..., None], batch_size=512, verbose=0)
                        for v in GRAPH_VIEWS.iter_views(faces)], axis=0)

    probabilities = np.mean([view_mean(keras.models.load_model(p)) for p in paths], axis=0).astype(np.float32)
    np.savez(cache, probabilities=probabilities, teachers=np.array(names))
    return probabilities


def augment_batch(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Randomly flip, rotate (±10°), zoom (±10 %), shift (±10 %), brighten (±15 %) and contrast (±20 %)
    each face of a (B, H, W) batch; returns float32 (B, H, W, 1) in 0..255.

    Runs on the host with OpenCV rather than inside the training step: Keras' image layers under JAX
    took 94 s to compile and 2.3 s a step on an H100, against 28 ms for the network alone.
    Borders reflect, as the earlier Keras layers' fill_mode="reflect" did.
    """
    n, h, w = images.shape
    angle = rng.uniform(-10.0, 10.0, n)
    scale = 1.0 + rng.uniform(-0.1, 0.1, n)
    shift = rng.uniform(-0.1, 0.1, (n, 2)) * (w, h)
    flip = rng.random(n) < 0.5
    return jitter_light(warp_faces(images, flip, angle, scale, shift), rng)[..., None]


def jitter_light(faces: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Contrast (±20 % about each face's mean) and brightness (±15 % of full scale), clipped to 0..255."""
    n = len(faces)
    mean = faces.mean(axis=(1, 2), keepdims=True)
    contrast = rng.uniform(0.8, 1.2, (n, 1, 1))
    brightness = rng.uniform(-0.15, 0.15, (n, 1, 1)) * 255.0
    return np.clip((faces - mean) * contrast + mean + brightness, 0.0, 255.0).astype(np.float32)


def warp_faces(images: np.ndarray, flip: np.ndarray, angle: np.ndarray, zoom: np.ndarray,
               shift: np.ndarray) -> np.ndarray:
    """Each face of (B, H, W) mirrored where `flip`, turned by `angle` degrees and zoomed by `zoom` about
    its centre, then moved by `shift` pixels (B, 2); float32 (B, H, W), borders reflected."""
    import cv2

    n, h, w = images.shape
    out = np.empty((n, h, w), np.float32)
    centre = ((w - 1) / 2.0, (h - 1) / 2.0)
    for i in range(n):
        face = images[i][:, ::-1] if flip[i] else images[i]
        m = cv2.getRotationMatrix2D(centre, float(angle[i]), float(zoom[i]))
        m[:, 2] += shift[i]
        out[i] = cv2.warpAffine(np.ascontiguousarray(face, np.float32), m, (w, h), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REFLECT)
    return out


def epoch_batches(images: np.ndarray, targets: np.ndarray, weights: np.ndarray, batch: int, seed: int,
                  epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One epoch of training data as arrays (faces, targets, weights): shuffled, augmented, whole batches only.

    The order depends on (seed, epoch) and each batch's draws on (seed, epoch, batch index) alone, so a run is
    reproducible and a resumed run continues with the epoch it stopped at instead of replaying epoch 0's draws.
    Plain arrays need no worker threads and every Keras backend takes them (scripts/bench_train.py compares
    them with a generator feed). One augmented epoch of FER2013 is 265 MB and takes about a second to make.
    """
    steps = len(images) // batch  # drop the ragged last batch
    order = np.random.default_rng((seed, epoch)).permutation(len(images))[:steps * batch]
    faces = np.concatenate([augment_batch(images[idx], np.random.default_rng((seed, epoch, i)))
                            for i, idx in enumerate(order.reshape(steps, batch))])
    return faces, targets[order], weights[order]


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fer_model import CLASSES, build_hybrid, mlp_unit_stats

    keras.utils.set_random_seed(args.seed)
    if _allocator() == "system malloc" and keras.backend.backend() == "tensorflow" and _accelerator() == "CPU":
        print("training on the system malloc, under which TensorFlow spends a quarter or more of its CPU time in "
              "the kernel: apt-get install libtcmalloc-minimal4 and start with "
              "LD_PRELOAD=/usr/lib/$(uname -m)-linux-gnu/libtcmalloc_minimal.so.4 (scripts/bench_train.py)", flush=True)
    if args.threads and keras.backend.backend() == "tensorflow":
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    x_train, y_train = load_npz(args.train)
    faces_train = x_train[..., 0]
    x_val, y_val = load_npz(args.val)
    counts = np.bincount(y_train, minlength=len(CLASSES))
    class_weight = None
    if args.class_weight_power > 0:
        w = (len(y_train) / (len(CLASSES) * np.maximum(counts, 1))) ** args.class_weight_power
        w = w / np.average(w, weights=counts)  # keep the mean loss scale unchanged
        class_weight = {i: float(v) for i, v in enumerate(w)}
    sample_w = np.ones(len(y_train), np.float32) if class_weight is None else \
        np.array([class_weight[int(c)] for c in y_train], np.float32)
    n_classes = len(CLASSES)
    onehot_train = np.eye(n_classes, dtype=np.float32)[y_train]
    targets_train = onehot_train
    if args.teacher:
        teacher = teacher_probabilities(args.teacher, faces_train, args.out / "teacher_probabilities.npz")
        print(f"teachers {[str(t) for t in args.teacher]}: clean training accuracy "
              f"{np.mean(teacher.argmax(1) == y_train):.4f}, weight {args.teacher_weight}", flush=True)
        targets_train = blend_targets(onehot_train, teacher, args.teacher_weight)
    onehot_val = np.eye(n_classes, dtype=np.float32)[y_val]

    steps = len(y_train) // args.batch
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=1e-6, decay_steps=max(1, steps * (args.epochs - args.warmup_epochs)),
        alpha=1e-5 / args.lr,
        warmup_target=args.lr, warmup_steps=steps * args.warmup_epochs)
    model = build_hybrid(width=args.width)
    checkpoint = args.out / "last.keras"
    if args.init_from and not checkpoint.exists():  # a resumed run takes its weights from the checkpoint
        revived = warm_start(model, keras.models.load_model(args.init_from), faces_train[:2000],
                             mlp_unit_stats, seed=args.seed)
        print(f"warm start from {args.init_from}: revived dead MLP units per ViT block {revived}", flush=True)
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=args.weight_decay)
    if args.exclude_norms_from_decay:
        optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias", "pos", "alpha_logit"])
    model.compile(optimizer=optimizer,
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=args.label_smoothing),
                  metrics=["accuracy"])
    epochs_done = 0
    if checkpoint.exists():
        optimizer.build(model.trainable_variables)
        model.load_weights(checkpoint)  # weights and optimizer state; its step count drives the schedule
        epochs_done = int(keras.ops.convert_to_numpy(optimizer.iterations)) // steps
        print(f"resuming from {checkpoint} after epoch {epochs_done}", flush=True)

    history_path = args.out / "history.csv"
    earlier_epochs = _read_history(history_path)
    if len(earlier_epochs) > epochs_done:  # killed between an epoch's history row and its checkpoint: redo it
        earlier_epochs = earlier_epochs[:epochs_done]
        if not earlier_epochs:
            history_path.unlink()  # CSVLogger starts a new file with its header
        else:
            with open(history_path, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(earlier_epochs[0]))
                writer.writeheader()
                writer.writerows(earlier_epochs)

    class EpochLog(keras.callbacks.Callback):
        """Times each epoch, records the fusion alpha, prints the epoch's line, and saves best.keras whenever
        its PublicTest accuracy beats every earlier epoch's, earlier processes of a resumed run included."""

        def __init__(self):
            super().__init__()
            self.best = max((float(r["val_accuracy"]) for r in earlier_epochs), default=-1.0)

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.time()

        def on_epoch_end(self, epoch, logs=None):
            logs["epoch_seconds"] = time.time() - self.t0
            logs["alpha"] = float(keras.ops.sigmoid(model.get_layer("fusion").logit))
            print(f"epoch {epoch + 1}/{args.epochs}: loss {logs['loss']:.4f}, accuracy {logs['accuracy']:.4f}, "
                  f"val_accuracy {logs['val_accuracy']:.4f}, {logs['epoch_seconds']:.0f} s", flush=True)
            if logs["val_accuracy"] > self.best:
                self.best = logs["val_accuracy"]
                model.save(args.out / "best.keras")

    class Checkpoint(keras.callbacks.Callback):
        """Saves last.keras (weights and optimizer state) after the epoch's history row is written, by a
        rename, so that a kill leaves either the old checkpoint or the new one, never half of one."""

        def on_epoch_end(self, epoch, logs=None):
            partial = args.out / "last.partial.keras"
            model.save(partial)
            os.replace(partial, checkpoint)

    callbacks = [EpochLog(), keras.callbacks.CSVLogger(str(history_path), append=True), Checkpoint()]
    started = time.time()
    for epoch in range(epochs_done, args.epochs):
        x, targets, weights = epoch_batches(faces_train, targets_train, sample_w, args.batch, args.seed, epoch)
        model.fit(x, targets, sample_weight=weights, batch_size=args.batch, shuffle=False, initial_epoch=epoch,
                  epochs=epoch + 1, validation_data=(x_val, onehot_val), validation_batch_size=512, verbose=0,
                  callbacks=callbacks)

    rows = _read_history(history_path)
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
        "keras_backend": keras.backend.backend(),
        "accelerator": _accelerator(),
        "allocator": _allocator(),
        "final_alpha": float(rows[-1].get("alpha", "nan") or "nan"),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
