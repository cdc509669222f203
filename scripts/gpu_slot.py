#!/usr/bin/env python3
"""Train one FER2013 candidate from scratch inside a short GPU slot: Keras 3 model, JAX training loop.

Why a loop of its own rather than train_fer.py's `fit` (models/fer_training.md, stage 4 and "GPU slot"):
- The data live on the device for the whole run (uint8, 66 MB for FER2013 Training); each epoch gathers its
  shuffled batches there, so no batch crosses the host bus.
- The augmentation runs on the device inside the training step and draws the same distributions as
  train_fer.augment_batch (flip, ±10° rotation, ±10 % zoom and shift, ±15 % brightness, ±20 % contrast,
  reflected borders). It is one composed affine map per face, sampled bilinearly with four gathers from the
  flattened batch: a few dozen elementwise HLO ops. Keras' image layers, which took 94 s to compile and 2.3 s a
  step under JAX in stage 4, run three separate warps through `map_coordinates` plus their own random
  bookkeeping; tests/test_gpu_slot.py times both on the CPU.
- One jitted call runs a whole epoch (`lax.scan` over its steps), compiled once ahead of time, so Python
  dispatch costs nothing per step and the compile time is measured apart from the epochs.
- Mixed precision (bfloat16 compute, float32 variables) by default; no loss scaling is needed for bfloat16.
- The schedule fits a wall-time budget (--budget-s): linear warm-up, then a cosine planned from the measured
  time of the first epoch, re-planned shorter if epochs turn out slower, so it anneals to its end inside the
  slot. A run never starts an epoch that would end past the deadline.
- Every epoch writes best.keras (best PublicTest accuracy so far) and last.keras to --out from a background
  thread, as plain float32 Keras models with no optimizer state (the same files train_fer.py's best.keras
  gives scripts/export_fer.py; width 1.0 is 9 MB, under the device tool's 16 MiB per file), plus
  history.csv and summary.json. A run cut off at any point still leaves the best model so far.

    KERAS_BACKEND=jax python3 scripts/gpu_slot.py --train fer2013_training.npz --val fer2013_publictest.npz \
        --out $OUT/run --arch hybrid --width 1.0 --budget-s 420

Export back here with TensorFlow: scripts/export_fer.py --run DIR (same input contract, views in the graph).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import queue
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

SCRIPTS = Path(__file__).resolve().parent
HISTORY_FIELDS = ("epoch", "loss", "accuracy", "val_accuracy", "val_macro_f1", "lr", "epoch_seconds",
                  "wall_seconds")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", required=True, type=Path, help="training .npz (images uint8 Nx48x48, labels)")
    p.add_argument("--val", required=True, type=Path, help="validation .npz used for model selection (PublicTest)")
    p.add_argument("--out", required=True, type=Path, help="run directory: best.keras, last.keras, history, summary")
    p.add_argument("--arch", default="hybrid", help="hybrid (ours, scripts/fer_model.py) or a seed model "
                                                    "(scripts/seed_models.py: seed-cnn, seed-rnn, ...)")
    p.add_argument("--width", type=float, default=1.0, help="MobileNetV2 width of the hybrid")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="wall seconds from start to the last checkpoint; the schedule is planned to end inside it")
    p.add_argument("--reserve-s", type=float, default=15.0, help="seconds kept back for the final checkpoint")
    p.add_argument("--max-epochs", type=int, default=300, help="upper bound on the planned epochs")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--lr", type=float, default=4e-3, help="peak AdamW learning rate after warm-up")
    p.add_argument("--min-lr", type=float, default=1e-5, help="where the cosine ends")
    p.add_argument("--warmup-epochs", type=float, default=5.0, help="capped at a tenth of the planned epochs")
    p.add_argument("--weight-decay", type=float, default=0.05,
                   help="AdamW decay; norms, biases, position embeddings and the fusion alpha are excluded")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--class-weight-power", type=float, default=0.25,
                   help="class weight = (N / (K n_c))^power, normalised to mean 1; 0 disables")
    p.add_argument("--precision", default="mixed_bfloat16", choices=("mixed_bfloat16", "float32"))
    p.add_argument("--limit-train", type=int, default=0, help="use this many training faces (0: all)")
    p.add_argument("--limit-val", type=int, default=0, help="use this many validation faces (0: all)")
    p.add_argument("--tiny", action="store_true",
                   help="smoke test: 320 training and 96 validation faces, batch 32, width 0.35, at most 2 epochs")
    p.add_argument("--eval-batch", type=int, default=1024)
    p.add_argument("--seed", type=int, default=1234)
    args = p.parse_args(argv)
    if args.tiny:
        args.limit_train = args.limit_train or 320
        args.limit_val = args.limit_val or 96
        args.batch = min(args.batch, 32)
        args.max_epochs = min(args.max_epochs, 2)
        if args.width == p.get_default("width"):
            args.width = 0.35
    if args.budget_s <= args.reserve_s:
        p.error(f"--budget-s ({args.budget_s}) must exceed --reserve-s ({args.reserve_s})")
    return args


# ---------------------------------------------------------------- schedule and budget (pure Python, tested)

def learning_rate(step: Any, peak: Any, warmup_steps: Any, total_steps: Any, min_lr: Any, xp: Any = np) -> Any:
    """Linear warm-up to `peak` over `warmup_steps`, then a cosine to `min_lr` at `total_steps`, flat after.

    `xp` is numpy or jax.numpy, so the training step computes the same curve on the device from traced
    scalars: a re-planned `total_steps` changes an argument, not the compiled program.
    """
    step = xp.asarray(step, dtype=xp.float32)
    warm = peak * (step + 1.0) / xp.maximum(warmup_steps, 1.0)
    progress = xp.clip((step - warmup_steps) / xp.maximum(total_steps - warmup_steps, 1.0), 0.0, 1.0)
    cosine = min_lr + 0.5 * (peak - min_lr) * (1.0 + xp.cos(math.pi * progress))
    return xp.where(step < warmup_steps, warm, cosine)


class BudgetPlan:
    """Decides how many epochs fit the wall-time budget, from the epochs measured so far.

    The first plan comes after the first epoch (compilation happens before it and is not counted as epoch
    time). Later epochs can only shorten the plan, never lengthen it, so the cosine the run has followed stays
    a cosine and still reaches its end before the deadline.
    """

    def __init__(self, deadline: float, max_epochs: int, warmup_epochs: float):
        self.deadline = deadline
        self.max_epochs = max_epochs
        self.warmup_request = warmup_epochs
        self.planned: int | None = None
        self.epoch_seconds: list[float] = []

    def per_epoch(self) -> float:
        """A cautious estimate of one more epoch: the slowest of the last three."""
        return max(self.epoch_seconds[-3:])

    def warmup_epochs(self) -> float:
        """Warm-up in epochs: as asked, but at most a tenth of the planned run (tiny plans keep the cosine)."""
        if self.planned is None:
            return self.warmup_request
        return min(self.warmup_request, max(self.planned / 10.0, 0.0))

    def total_epochs(self) -> int:
        """Epochs the schedule spans now (the upper bound before the first plan)."""
        return self.planned if self.planned is not None else self.max_epochs

    def after_epoch(self, done: int, seconds: float, now: float) -> bool:
        """Record epoch `done` (1-based) taking `seconds`; returns whether another epoch should start."""
        self.epoch_seconds.append(seconds)
        fit = done + int(max(0.0, self.deadline - now) // self.per_epoch())
        if self.planned is None:
            self.planned = max(done, min(self.max_epochs, fit))
        elif fit < self.planned:
            self.planned = max(done, fit)
        return done < self.planned and now + self.per_epoch() <= self.deadline


# ---------------------------------------------------------------- data

def load_split(path: Path, limit: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Faces (uint8 N×48×48) and labels; `limit` keeps a seeded random subset (the splits are class-sorted)."""
    with np.load(path) as data:
        images, labels = data["images"].astype(np.uint8), data["labels"].astype(np.int32)
    if limit and limit < len(labels):
        keep = np.sort(np.random.default_rng(seed).permutation(len(labels))[:limit])
        images, labels = images[keep], labels[keep]
    return images, labels


def class_weights(labels: np.ndarray, classes: int, power: float) -> np.ndarray:
    """(N / (K n_c))^power per class, normalised so the mean sample weight is 1 (as train_fer.py)."""
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    if power <= 0:
        return np.ones(classes, np.float32)
    w = (len(labels) / (classes * np.maximum(counts, 1))) ** power
    return (w / np.average(w, weights=np.maximum(counts, 1e-12))).astype(np.float32)


def macro_f1(labels: np.ndarray, predicted: np.ndarray, classes: int) -> float:
    """Unweighted mean of the per-class F1 over the classes present in labels or predictions."""
    scores = []
    for c in range(classes):
        tp = np.sum((predicted == c) & (labels == c))
        fp = np.sum((predicted == c) & (labels != c))
        fn = np.sum((predicted != c) & (labels == c))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


# ---------------------------------------------------------------- on-device augmentation (JAX)

def augment_params(key: Any, n: int, height: int, width: int) -> dict[str, Any]:
    """Per-face draws with train_fer.augment_batch's distributions (same ranges, same meaning)."""
    import jax
    import jax.numpy as jnp

    k = jax.random.split(key, 6)
    return {
        "angle": jax.random.uniform(k[0], (n,), minval=-10.0, maxval=10.0),
        "scale": 1.0 + jax.random.uniform(k[1], (n,), minval=-0.1, maxval=0.1),
        "shift": jax.random.uniform(k[2], (n, 2), minval=-0.1, maxval=0.1) * jnp.array([width, height], jnp.float32),
        "flip": jax.random.uniform(k[3], (n,)) < 0.5,
        "contrast": jax.random.uniform(k[4], (n,), minval=0.8, maxval=1.2),
        "brightness": jax.random.uniform(k[5], (n,), minval=-0.15, maxval=0.15) * 255.0,
    }


def _reflect(index: Any, size: int) -> Any:
    """OpenCV's BORDER_REFLECT (fedcba|abcdefgh|hgfedcb) for integer indices of any distance."""
    import jax.numpy as jnp

    period = jnp.mod(index, 2 * size)
    return jnp.where(period >= size, 2 * size - 1 - period, period)


def augment(images: Any, params: dict[str, Any]) -> Any:
    """Warp, mirror and re-light a (B, H, W) float batch on the device; returns (B, H, W, 1) in 0..255.

    Matches cv2.warpAffine(face, getRotationMatrix2D(centre, angle, scale) + shift, INTER_LINEAR,
    BORDER_REFLECT) on the (optionally mirrored) face, then contrast about the face's mean and brightness,
    as train_fer.augment_batch does. The affine map is inverted in closed form (rotation times scale), so the
    whole warp is elementwise arithmetic plus four gathers.
    """
    import jax.numpy as jnp

    n, h, w = images.shape
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    theta = jnp.deg2rad(params["angle"])
    a = params["scale"] * jnp.cos(theta)
    b = params["scale"] * jnp.sin(theta)
    tx = (1.0 - a) * cx - b * cy + params["shift"][:, 0]
    ty = b * cx + (1.0 - a) * cy + params["shift"][:, 1]
    ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    dx = xs[None] - tx[:, None, None]
    dy = ys[None] - ty[:, None, None]
    s2 = (a * a + b * b)[:, None, None]
    src_x = (a[:, None, None] * dx - b[:, None, None] * dy) / s2
    src_y = (b[:, None, None] * dx + a[:, None, None] * dy) / s2
    src_x = jnp.where(params["flip"][:, None, None], (w - 1) - src_x, src_x)  # sample the mirrored face
    x0f, y0f = jnp.floor(src_x), jnp.floor(src_y)
    fx, fy = src_x - x0f, src_y - y0f
    x0, y0 = x0f.astype(jnp.int32), y0f.astype(jnp.int32)
    flat = images.reshape(n, h * w)

    def tap(yi: Any, xi: Any) -> Any:
        idx = (_reflect(yi, h) * w + _reflect(xi, w)).reshape(n, h * w)
        return jnp.take_along_axis(flat, idx, axis=1).reshape(n, h, w)

    top = (1.0 - fx) * tap(y0, x0) + fx * tap(y0, x0 + 1)
    bottom = (1.0 - fx) * tap(y0 + 1, x0) + fx * tap(y0 + 1, x0 + 1)
    out = (1.0 - fy) * top + fy * bottom
    mean = out.mean(axis=(1, 2), keepdims=True)
    out = (out - mean) * params["contrast"][:, None, None] + mean + params["brightness"][:, None, None]
    return jnp.clip(out, 0.0, 255.0)[..., None]


# ---------------------------------------------------------------- optimizer (Keras AdamW's arithmetic)

def decays(name: str, excluded: tuple[str, ...]) -> bool:
    """Whether AdamW decays a variable of this name (train_fer.py's --exclude-norms-from-decay list)."""
    return not any(part in name for part in excluded)


NO_DECAY = ("gamma", "beta", "bias", "pos", "alpha_logit")


def adamw(params: list, grads: list, m: list, v: list, step: Any, lr: Any, weight_decay: float,
          decay_mask: list[bool], beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7):
    """One AdamW step with keras.optimizers.AdamW's update (decoupled decay first, bias-corrected Adam),
    written out so that the learning rate is a traced argument; returns (params, m, v)."""
    import jax.numpy as jnp

    t = jnp.asarray(step, jnp.float32) + 1.0
    alpha = lr * jnp.sqrt(1.0 - beta_2 ** t) / (1.0 - beta_1 ** t)
    new_p, new_m, new_v = [], [], []
    for p, g, mi, vi, dec in zip(params, grads, m, v, decay_mask):
        g = g.astype(p.dtype)
        if dec and weight_decay:
            p = p - p * weight_decay * lr
        mi = mi + (g - mi) * (1.0 - beta_1)
        vi = vi + (g * g - vi) * (1.0 - beta_2)
        new_p.append(p - mi * alpha / (jnp.sqrt(vi) + epsilon))
        new_m.append(mi)
        new_v.append(vi)
    return new_p, new_m, new_v


# ---------------------------------------------------------------- the run

class Saver:
    """Writes the float32 twin of the training model to --out in a background thread, so a checkpoint each
    epoch costs the training loop only a device-to-host copy. The latest request wins; `close` flushes."""

    def __init__(self, twin: Any, out: Path):
        self.twin = twin
        self.variables = list(twin.trainable_variables) + list(twin.non_trainable_variables)
        self.out = out
        self.jobs: queue.Queue = queue.Queue(maxsize=1)
        self.error: BaseException | None = None
        self.seconds: list[float] = []
        self.thread = threading.Thread(target=self._work, daemon=True)
        self.thread.start()

    def request(self, values: list[np.ndarray], names: list[str]) -> None:
        try:
            self.jobs.put((values, names), timeout=120)
        except queue.Full:  # the saver is stuck: say so rather than block the slot
            print("checkpoint writer busy for 120 s: skipping this checkpoint", flush=True)

    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            values, names = job
            try:
                t0 = time.perf_counter()
                for var, val in zip(self.variables, values):
                    var.assign(val)
                for name in names:
                    partial = self.out / f"{name}.partial.keras"
                    self.twin.save(partial)
                    os.replace(partial, self.out / f"{name}.keras")
                self.seconds.append(time.perf_counter() - t0)
            except BaseException as exc:  # reported by close(); training goes on
                self.error = exc
            finally:
                self.jobs.task_done()

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join()
        if self.error is not None:
            raise RuntimeError(f"writing a checkpoint failed: {self.error!r}") from self.error


def _accelerator() -> str:
    import jax

    return ", ".join(sorted({d.device_kind for d in jax.devices()}))


def build_epoch_fn(model: Any, steps: int, batch: int, classes: int, args: argparse.Namespace,
                   svm: bool, decay_mask: list[bool]) -> Callable:
    """The jitted epoch: shuffle on the device, then `steps` scan iterations of gather, augment, forward,
    loss, gradient and AdamW. Everything that changes between epochs is an argument."""
    import jax
    import jax.numpy as jnp

    smoothing = 0.0 if svm else args.label_smoothing

    def loss_fn(tv: list, ntv: list, x: Any, y: Any, w: Any):
        outputs, ntv = model.stateless_call(tv, ntv, x, training=True)
        probs = outputs[0].astype(jnp.float32) if svm else outputs.astype(jnp.float32)
        onehot = jax.nn.one_hot(y, classes, dtype=jnp.float32)
        if svm:  # one-vs-rest squared hinge on the linear SVM's scores (keras.losses.SquaredHinge)
            scores = outputs[1].astype(jnp.float32)
            per_face = jnp.mean(jnp.square(jnp.maximum(1.0 - (2.0 * onehot - 1.0) * scores, 0.0)), axis=-1)
        else:  # categorical cross-entropy with label smoothing, Keras' clipping
            target = onehot * (1.0 - smoothing) + smoothing / classes
            per_face = -jnp.sum(target * jnp.log(jnp.clip(probs, 1e-7, 1.0)), axis=-1)
        loss = jnp.mean(per_face * w)
        correct = jnp.sum(jnp.argmax(probs, axis=-1) == y)
        return loss, (ntv, correct)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def epoch(state: dict, images: Any, labels: Any, weights: Any, key: Any, schedule: Any):
        perm_key, aug_key = jax.random.split(key)
        order = jax.random.permutation(perm_key, images.shape[0])[:steps * batch].reshape(steps, batch)
        peak, warmup, total, min_lr = schedule[0], schedule[1], schedule[2], schedule[3]

        def step(carry: dict, i: Any):
            idx = order[i]
            x = augment(images[idx].astype(jnp.float32), augment_params(jax.random.fold_in(aug_key, i), batch,
                                                                         images.shape[1], images.shape[2]))
            y = labels[idx]
            (loss, (ntv, correct)), grads = grad_fn(carry["tv"], carry["ntv"], x, y, weights[y])
            lr = learning_rate(carry["step"], peak, warmup, total, min_lr, xp=jnp)
            tv, m, v = adamw(carry["tv"], grads, carry["m"], carry["v"], carry["step"], lr, args.weight_decay,
                             decay_mask)
            new = {"tv": tv, "ntv": ntv, "m": m, "v": v, "step": carry["step"] + 1}
            return new, (loss, correct, lr)

        state, (losses, correct, lrs) = jax.lax.scan(step, state, jnp.arange(steps))
        return state, jnp.mean(losses), jnp.sum(correct) / (steps * batch), lrs[-1]

    return jax.jit(epoch, donate_argnums=(0,))


def main(argv: list[str] | None = None) -> int:
    started = time.time()
    args = parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "jax")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    if keras.backend.backend() != "jax":
        raise SystemExit(f"gpu_slot.py trains on Keras' JAX backend (KERAS_BACKEND=jax), not {keras.backend.backend()}")
    import jax
    import jax.numpy as jnp

    sys.path.insert(0, str(SCRIPTS))
    from fer_model import CLASSES
    from seed_models import build_model, uses_svm_head

    stop = {"signal": None}

    def on_signal(signum: int, _frame: Any) -> None:  # `timeout` sends SIGTERM: finish the epoch, then save
        stop["signal"] = signal.Signals(signum).name

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    args.out.mkdir(parents=True, exist_ok=True)
    classes = len(CLASSES)
    keras.utils.set_random_seed(args.seed)

    x_train, y_train = load_split(args.train, args.limit_train, args.seed)
    x_val, y_val = load_split(args.val, args.limit_val, args.seed + 1)
    steps = len(y_train) // args.batch
    if steps < 1:
        raise SystemExit(f"{len(y_train)} training faces make no batch of {args.batch}")
    cw = class_weights(y_train, classes, args.class_weight_power)

    keras.config.set_dtype_policy("float32")
    twin = build_model(args.arch, width=args.width)  # what the checkpoints hold: float32, no optimizer
    keras.config.set_dtype_policy(args.precision)
    model = build_model(args.arch, width=args.width)
    keras.config.set_dtype_policy("float32")
    svm = uses_svm_head(args.arch)
    train_model = keras.Model(model.inputs, [model.output, model.get_layer("svm_scores").output]) if svm else model
    shapes = [tuple(v.shape) for v in model.trainable_variables + model.non_trainable_variables]
    if shapes != [tuple(v.shape) for v in twin.trainable_variables + twin.non_trainable_variables]:
        raise SystemExit("the float32 twin and the training model disagree on their variables")
    if [id(v) for v in train_model.variables] != [id(v) for v in model.variables]:
        raise SystemExit("the training model's variables are not the model's, in the model's order")
    decay_mask = [decays(v.name, NO_DECAY) for v in train_model.trainable_variables]

    t0 = time.perf_counter()
    images = jax.device_put(x_train)
    labels = jax.device_put(y_train)
    weights = jax.device_put(cw)
    val_images = jax.device_put(x_val)
    to_device_s = time.perf_counter() - t0
    tv = [v.value for v in train_model.trainable_variables]
    state = {"tv": tv, "ntv": [v.value for v in train_model.non_trainable_variables],
             "m": [jnp.zeros_like(p) for p in tv], "v": [jnp.zeros_like(p) for p in tv],
             "step": jnp.zeros((), jnp.int32)}

    epoch_fn = build_epoch_fn(train_model, steps, args.batch, classes, args, svm, decay_mask)
    plan = BudgetPlan(started + args.budget_s - args.reserve_s, args.max_epochs, args.warmup_epochs)

    def schedule_args() -> Any:
        return jnp.array([args.lr, plan.warmup_epochs() * steps, plan.total_epochs() * steps, args.min_lr],
                         jnp.float32)

    key = jax.random.PRNGKey(args.seed)
    t0 = time.perf_counter()
    compiled = epoch_fn.lower(state, images, labels, weights, key, schedule_args()).compile()
    compile_s = time.perf_counter() - t0

    eval_batch = min(args.eval_batch, len(y_val))
    pad = (-len(y_val)) % eval_batch
    val_padded = jnp.concatenate([val_images, jnp.zeros((pad, *x_val.shape[1:]), jnp.uint8)]) if pad else val_images

    @jax.jit
    def predict(tv: list, ntv: list, faces: Any) -> Any:
        out, _ = train_model.stateless_call(tv, ntv, faces.astype(jnp.float32)[..., None], training=False)
        return jnp.argmax(out[0] if svm else out, axis=-1)

    def evaluate(st: dict) -> np.ndarray:
        preds = [predict(st["tv"], st["ntv"], val_padded[i:i + eval_batch])
                 for i in range(0, val_padded.shape[0], eval_batch)]
        return np.asarray(jnp.concatenate(preds))[:len(y_val)]

    t0 = time.perf_counter()
    evaluate(state)
    eval_compile_s = time.perf_counter() - t0
    params = int(sum(np.prod(v.shape) for v in twin.trainable_variables + twin.non_trainable_variables))
    print(f"{args.arch} width {args.width}: {params} parameters, {len(y_train)} training faces, {steps} steps of "
          f"{args.batch}, {args.precision} on {_accelerator()}; data to device {to_device_s:.1f} s, epoch compiled "
          f"in {compile_s:.1f} s, evaluation in {eval_compile_s:.1f} s", flush=True)

    saver = Saver(twin, args.out)
    history_path = args.out / "history.csv"
    rows: list[dict] = []
    best = {"val_accuracy": -1.0, "epoch": 0}
    summary: dict = {}

    def write_summary(stopped_by: str) -> None:
        summary.update({
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "args": {k: None if v is None else str(v) for k, v in vars(args).items()},
            "arch": args.arch,
            "parameters": params,
            "keras_backend": "jax",
            "keras_version": keras.__version__,
            "jax_version": jax.__version__,
            "accelerator": _accelerator(),
            "precision": args.precision,
            "class_weight": {c: round(float(w), 4) for c, w in zip(CLASSES, cw)},
            "train_faces": int(len(y_train)),
            "val_faces": int(len(y_val)),
            "steps_per_epoch": steps,
            "data_to_device_seconds": round(to_device_s, 2),
            "compile_seconds": round(compile_s, 2),
            "eval_compile_seconds": round(eval_compile_s, 2),
            "epochs_completed": len(rows),
            "epochs_planned": plan.planned,
            "warmup_epochs": plan.warmup_epochs(),
            "stopped_by": stopped_by,
            "best_epoch": best["epoch"],
            "best_val_accuracy": best["val_accuracy"],
            "final_val_accuracy": rows[-1]["val_accuracy"] if rows else None,
            "final_train_accuracy": rows[-1]["accuracy"] if rows else None,
            "seconds_all_epochs": round(sum(r["epoch_seconds"] for r in rows), 2),
            "checkpoint_write_seconds": [round(s, 2) for s in saver.seconds],
            "wall_seconds": round(time.time() - started, 1),
        })
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    stopped_by = "schedule"
    epoch = 0
    while True:
        t0 = time.perf_counter()
        state, loss, acc, lr = compiled(state, images, labels, weights, jax.random.fold_in(key, epoch),
                                        schedule_args())
        loss, acc, lr = float(loss), float(acc), float(lr)  # waits for the device
        train_s = time.perf_counter() - t0
        predicted = evaluate(state)
        val_acc = float(np.mean(predicted == y_val))
        epoch += 1
        host = jax.device_get(state["tv"]) + jax.device_get(state["ntv"])
        names = ["last"]
        if val_acc > best["val_accuracy"]:
            best = {"val_accuracy": val_acc, "epoch": epoch}
            names.append("best")
        saver.request(host, names)
        epoch_wall = time.perf_counter() - t0
        rows.append({"epoch": epoch - 1, "loss": round(loss, 5), "accuracy": round(acc, 5),
                     "val_accuracy": round(val_acc, 5), "val_macro_f1": round(macro_f1(y_val, predicted, classes), 5),
                     "lr": lr, "epoch_seconds": round(train_s, 3), "wall_seconds": round(time.time() - started, 1)})
        with open(history_path, "w", newline="") as fh:  # epoch is 0-based, as Keras' CSVLogger writes it
            writer = csv.DictWriter(fh, fieldnames=HISTORY_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        go_on = plan.after_epoch(epoch, epoch_wall, time.time())
        print(f"epoch {epoch}/{plan.planned}: loss {loss:.4f}, accuracy {acc:.4f}, val_accuracy {val_acc:.4f}, "
              f"lr {lr:.2e}, {train_s:.2f} s train, {epoch_wall:.2f} s in all", flush=True)
        if stop["signal"]:
            stopped_by = f"signal {stop['signal']}"
        elif not go_on and epoch < plan.planned:
            stopped_by = "budget"
        write_summary("running" if go_on and not stop["signal"] else stopped_by)
        if stop["signal"] or not go_on:
            break
    saver.close()
    write_summary(stopped_by)
    print(json.dumps({k: summary[k] for k in ("epochs_completed", "epochs_planned", "stopped_by", "best_epoch",
                                              "best_val_accuracy", "compile_seconds", "wall_seconds")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
