#!/usr/bin/env python3
"""Fine-tune the shipped face model to the Haar detector's framing, then export float and int8 again.

Why: on the proxy (scripts/bench_face_proxy.py) the crop the detector gives is 0.84-1.18x the side of
FER2013's frame (10th-90th percentile) and its centre is off by up to a tenth of the side, while the model
was trained with +-10 % zoom. Each training face is therefore cut as the detector would cut it, and the
networks learn to give the answer the shipped model gives on the clean face: the target is a blend of the
label and the shipped graph's own probabilities on the unwarped face (consistency distillation), so what
the model knew on well-framed faces is kept. Two framings: `--framing haar` (the default) cuts each face
where the Haar box frames that very face (HaarFrames: the box a face gets in a scene follows the box it
gets upscaled and padded on its own), `--framing percentiles` draws a framing from the proxy's measured
spread, whatever the face.

The weights come from the shipped float .tflite itself (scripts/fer_graph.py replays it in TensorFlow;
the GPU run's checkpoints are not kept). Long job, run in the background; it checkpoints every epoch
(`--out`/weights-E.npz) and resumes from the last one:

    nohup python scripts/finetune_fer.py --train ../shared/datasets/fer2013/fer2013_training.npz \
        --val ../shared/datasets/fer2013/fer2013_publictest.npz --out build/fer_finetune \
        > build/fer_finetune.log 2>&1 &

then `--export` writes models/fer_float.tflite, models/fer_int8.tflite and updates models/fer.json
(`--models-out` elsewhere to measure a candidate first). Neither run of 2026-12-03 (one per framing) earned
its place and neither was shipped: models/fer_finetune_summary.json has their figures.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

PERCENTILES = (10, 25, 50, 75, 90)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=Path, required=True)
    p.add_argument("--val", type=Path, required=True, help="PublicTest: reported each epoch, not used to select")
    p.add_argument("--out", type=Path, required=True, help="run directory (checkpoints, teacher cache, log)")
    p.add_argument("--model", type=Path, default=ROOT / "models" / "fer_float.tflite",
                   help="the float graph to start from")
    p.add_argument("--geometry", type=Path, default=ROOT / "models" / "fer_proxy.json",
                   help="JSON whose `geometry` holds the detector's framing percentiles")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate, cosine to 2 %% of it")
    p.add_argument("--optimizer", choices=("sgd", "lamb"), default="sgd",
                   help="SGD with momentum 0.9, or LAMB (its step a share of each tensor's norm)")
    p.add_argument("--teacher-weight", type=float, default=0.5,
                   help="share of the shipped model's answer in the target")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--detector-share", type=float, default=0.75,
                   help="share of faces warped by the detector's framing; the rest keep the original recipe "
                        "(with --framing haar, of the faces the cascade finds: about 0.56 of all at 0.75)")
    p.add_argument("--framing", choices=("haar", "percentiles"), default="haar",
                   help="haar: each face framed as the Haar box frames that very face (HaarFrames); "
                        "percentiles: a framing drawn from the proxy's spread, independent of the face")
    p.add_argument("--haar-jitter", type=float, nargs=2, default=(0.08, 0.03), metavar=("LOG_SIDE", "SHIFT"),
                   help="spread added to each face's own Haar frame: s.d. of the log side ratio and of the "
                        "centre shift in sides (a face's box in a scene differs from its box on the padded "
                        "face by 0.077 in log side on the proxy)")
    p.add_argument("--limit", type=int, default=0,
                   help="use only this many training faces, drawn at random (a quick check)")
    p.add_argument("--seed", type=int, default=2031)
    p.add_argument("--export", action="store_true", help="export the last checkpoint instead of training")
    p.add_argument("--models-out", type=Path, default=ROOT / "models")
    p.add_argument("--calibration", type=int, default=1000)
    return p.parse_args(argv)


class Framing:
    """The detector's crop relative to the true frame: side ratio and centre shift, drawn from percentiles."""

    def __init__(self, geometry: dict):
        if list(geometry.get("percentiles", [])) != list(PERCENTILES):
            raise ValueError(f"geometry percentiles must be {PERCENTILES}, got {geometry.get('percentiles')}")
        self.side = self._inverse_cdf(geometry["fer2013_side_over_true_side"])
        self.shift_x = self._inverse_cdf(geometry["centre_shift_x_in_sides"])
        self.shift_y = self._inverse_cdf(geometry["centre_shift_y_in_sides"])

    @staticmethod
    def _inverse_cdf(q: list[float]):
        """Piecewise-linear quantile function through the five percentiles, tails extended at the outer slope."""
        p = np.array([0.0, *[x / 100 for x in PERCENTILES], 1.0])
        lo = q[0] - (q[1] - q[0]) * (10 / 15)
        hi = q[-1] + (q[-1] - q[-2]) * (10 / 15)
        values = np.array([lo, *q, hi])
        return lambda u: np.interp(u, p, values)

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        side = self.side(rng.random(n))
        shift = np.stack([self.shift_x(rng.random(n)), self.shift_y(rng.random(n))], axis=1)
        return side, shift


class HaarFrames:
    """Each training face's own Haar framing: where the pipeline would cut it, relative to its FER2013 frame.

    The proxy's crop errors are not noise independent of the face: the box a face gets in a scene follows
    the box the same face gets upscaled and padded on its own (scripts/measure_fer_framing.py's set-up;
    correlation 0.83 in log side, 0.75 and 0.85 in centre shift, on 420 proxy faces). So the pipeline's
    input for a face is predictable from the face, and training on it teaches the model the detector's
    framing instead of FER2013's. `frames` is (N, 3): side ratio, centre shift x and y in sides (NaN where
    the cascade finds no face, about a quarter; those keep the original recipe).
    """

    def __init__(self, frames: np.ndarray, jitter: tuple[float, float] = (0.08, 0.03)):
        if frames.ndim != 2 or frames.shape[1] != 3:
            raise ValueError(f"Haar frames must be (N, 3), got {frames.shape}")
        self.frames = frames
        self.jitter = jitter

    @staticmethod
    def measure(images: np.ndarray, processes: int = 2) -> np.ndarray:
        """(N, 3) frames of (N, 48, 48) faces, from the frontal cascade on each face upscaled and padded."""
        from multiprocessing import Pool

        with Pool(processes) as pool:
            return np.array(pool.map(_haar_frame, images, chunksize=256), np.float64)

    @classmethod
    def cached(cls, images: np.ndarray, cache: Path, jitter: tuple[float, float]) -> HaarFrames:
        if cache.exists():
            frames = np.load(cache)
            if frames.shape == (len(images), 3):
                return cls(frames, jitter)
        frames = cls.measure(images)
        np.save(cache, frames)
        return cls(frames, jitter)

    def draw(self, rng: np.random.Generator, index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Side ratios, shifts (B, 2) and which faces have a frame, for the faces at `index`."""
        f = self.frames[index]
        has = np.isfinite(f[:, 0])
        side = np.where(has, f[:, 0], 1.0) * np.exp(rng.normal(0, self.jitter[0], len(f)))
        shift = np.where(has[:, None], f[:, 1:], 0.0) + rng.normal(0, self.jitter[1], (len(f), 2))
        return side, shift, has


@functools.lru_cache(maxsize=1)
def _detector():
    """The Haar detector (align none: what is measured is where the Haar box alone frames each face), one
    per worker process."""
    import cv2

    from pi.vision.face import FaceDetector

    cv2.setNumThreads(1)
    return FaceDetector()


def _haar_frame(face: np.ndarray) -> tuple[float, float, float]:
    """One face's frame (side ratio, shift x, shift y) as the pipeline's crop maps its Haar box."""
    from measure_fer_framing import haar_box

    from pi.vision.face import frame_square

    box = haar_box(_detector(), face, min_share=0.55)
    if box is None:
        return (np.nan, np.nan, np.nan)
    cx, cy, side = frame_square(box)
    return side, cx - 0.5, cy - 0.5


def warp_batch(images: np.ndarray, rng: np.random.Generator, framing: Framing | HaarFrames,
               detector_share: float, index: np.ndarray | None = None):
    """Each face of (B, H, W) framed as the detector would crop it (or by the original recipe), flipped at
    random, with the original brightness/contrast jitter; returns (float32 (B, H, W) 0..255, flipped).
    With HaarFrames, `index` names the faces' rows in its table."""
    from train_fer import jitter_light, warp_faces

    n, h, w = images.shape
    if isinstance(framing, HaarFrames):
        if index is None:
            raise ValueError("HaarFrames needs the faces' index")
        side, shift, has = framing.draw(rng, index)
        detector = (rng.random(n) < detector_share) & has
    else:
        side, shift = framing.draw(rng, n)
        detector = rng.random(n) < detector_share
    # the original recipe (scripts/train_fer.py augment_batch): zoom +-10 %, shift +-10 %
    zoom = np.where(detector, 1.0 / side, 1.0 + rng.uniform(-0.1, 0.1, n))
    offset = np.where(detector[:, None], -shift * (w, h) / side[:, None], rng.uniform(-0.1, 0.1, (n, 2)) * (w, h))
    angle = rng.uniform(-12.0, 12.0, n)  # the proxy's turns; the pipeline does not turn faces upright
    flip = rng.random(n) < 0.5
    return jitter_light(warp_faces(images, flip, angle, zoom, offset), rng), flip


def fingerprint(images: np.ndarray) -> str:
    """A short digest of the faces themselves, to name their caches: another --limit draw, --seed or
    training file of the same size must not reuse a cache computed for other faces."""
    import hashlib

    return f"{len(images)}-{hashlib.sha1(np.ascontiguousarray(images).tobytes()).hexdigest()[:12]}"


def teacher_probabilities(model: Path, faces: np.ndarray, cache: Path) -> np.ndarray:
    """The shipped graph's probabilities on each clean face (its in-graph views include the mirror image)."""
    if cache.exists():
        cached = np.load(cache)
        if cached.shape == (len(faces), 7):
            return cached
    from pi.vision.fer import FER_CLASSES, ExpressionClassifier

    probs = ExpressionClassifier(model, FER_CLASSES, faces.shape[1], threads=2).predict(faces)
    np.save(cache, probs)
    return probs


class Trainer:
    """The replayed networks (both members of the ensemble) on a batch of single faces, with their weights."""

    def __init__(self, model: Path):
        import tensorflow as tf
        from fer_graph import FerGraph

        self.graph = FerGraph(model)
        self.logit_ids = self.graph.logits()
        first_conv = next(op for op in self.graph.ops if op.name == "CONV_2D")
        self.face_id = first_conv.inputs[0]  # the normalised views, (views, H, W, 1)
        self.member_ops = self.graph.ancestors(self.logit_ids, stop={self.face_id})
        self.weights = {t: tf.Variable(self.graph.constants[t], name=f"t{t}")
                        for t in self.graph.trainable(self.member_ops)}

    def logits(self, faces):
        """Per network (N, 7) logits of raw 0..255 faces (N, H, W, 1); normalised as the graph does."""
        values = self.graph.run(self.member_ops, {self.face_id: faces / 127.5 - 1.0}, self.weights, batch_free=True)
        return [values[t] for t in self.logit_ids]

    def graph_module(self):
        """A trackable owner of the weights, which the converter needs beside the concrete function."""
        import tensorflow as tf

        module = tf.Module()
        module.weights = list(self.weights.values())
        return module

    def state(self) -> dict[str, np.ndarray]:
        return {f"t{t}": v.numpy() for t, v in self.weights.items()}

    def load(self, state) -> None:
        for t, v in self.weights.items():
            v.assign(state[f"t{t}"])


def evaluate(trainer: Trainer, images: np.ndarray, labels: np.ndarray, batch: int = 256) -> dict:
    """Accuracy of each network and of their mean on single unflipped views (a quick per-epoch figure)."""
    import tensorflow as tf

    probs: list[list[np.ndarray]] = [[] for _ in trainer.logit_ids]
    for i in range(0, len(images), batch):
        x = tf.constant(images[i:i + batch, ..., None].astype(np.float32))
        for k, logit in enumerate(trainer.logits(x)):
            probs[k].append(tf.nn.softmax(logit).numpy())
    member = [np.concatenate(p) for p in probs]
    out = {f"member{k}": round(float(np.mean(p.argmax(1) == labels)), 4) for k, p in enumerate(member)}
    out["ensemble"] = round(float(np.mean(np.mean(member, axis=0).argmax(1) == labels)), 4)
    return out


def train(args: argparse.Namespace) -> int:
    import tensorflow as tf

    from pi.vision.evaluation import load_dataset

    args.out.mkdir(parents=True, exist_ok=True)
    images, labels = load_dataset(args.train)
    if args.limit:  # a random subset: the file is sorted by class
        keep = np.sort(np.random.default_rng(args.seed).choice(len(images), args.limit, replace=False))
        images, labels = images[keep], labels[keep]
    val_images, val_labels = load_dataset(args.val)
    framing: Framing | HaarFrames
    if args.framing == "haar":
        framing = HaarFrames.cached(images, args.out / f"haar-frames-{fingerprint(images)}.npy",
                                    tuple(args.haar_jitter))
        checked = HaarFrames.cached(val_images, args.out / f"haar-frames-{fingerprint(val_images)}.npy", (0.0, 0.0))
        print(f"Haar frames: {np.isfinite(framing.frames[:, 0]).mean():.3f} of training faces, "
              f"{np.isfinite(checked.frames[:, 0]).mean():.3f} of PublicTest", flush=True)
    else:
        framing = checked = Framing(json.loads(args.geometry.read_text())["geometry"])  # type: ignore[assignment]
    # the jittered check: PublicTest framed once as the detector frames it (fixed draw)
    jitter_rng = np.random.default_rng(7)
    val_jittered, _ = warp_batch(val_images, jitter_rng, checked, 1.0, index=np.arange(len(val_images)))
    teacher = teacher_probabilities(args.model, images, args.out / f"teacher-{fingerprint(images)}.npy")
    counts = np.bincount(labels, minlength=7)
    class_weight = ((len(labels) / (7 * np.maximum(counts, 1))) ** 0.25).astype(np.float32)  # as train_fer.py

    trainer = Trainer(args.model)
    steps = len(images) // args.batch
    total = steps * args.epochs
    schedule = tf.keras.optimizers.schedules.CosineDecay(args.lr, total, alpha=0.02)
    # Not plain Adam: its steps are equal-sized, and the folded weights span six decades (median |w| down
    # to 5e-6 in member 1's ViT projections, which carry their layer norm's scale). SGD's steps scale with
    # the gradient (the measured run, models/fer_finetune_summary.json), LAMB's with each tensor's norm.
    optimizer = tf.keras.optimizers.SGD(schedule, momentum=0.9) if args.optimizer == "sgd" else \
        tf.keras.optimizers.Lamb(schedule, weight_decay=0.0)
    variables = list(trainer.weights.values())
    start = 0
    checkpoints = sorted(args.out.glob("weights-*.npz"), key=lambda p: int(p.stem.split("-")[1]))
    log_path = args.out / "history.jsonl"
    if checkpoints:
        state = np.load(checkpoints[-1])
        trainer.load(state)
        start = int(checkpoints[-1].stem.split("-")[1])
        optimizer.build(variables)
        optimizer.iterations.assign(start * steps)  # the schedule continues; LAMB's moments start afresh
        print(f"resumed from {checkpoints[-1].name} (epoch {start})", flush=True)
    else:
        before = {"epoch": 0, "publictest": evaluate(trainer, val_images, val_labels),
                  "publictest_jittered": evaluate(trainer, val_jittered.astype(np.uint8), val_labels)}
        log_path.write_text(json.dumps(before) + "\n")
        print(json.dumps(before), flush=True)

    @tf.function
    def step(faces, targets, weights):
        with tf.GradientTape() as tape:
            losses = [tf.keras.losses.categorical_crossentropy(targets, logit, from_logits=True)
                      for logit in trainer.logits(faces)]
            loss = tf.add_n([tf.reduce_sum(per_face * weights) / tf.reduce_sum(weights) for per_face in losses])
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    onehot = np.eye(7, dtype=np.float32)[labels]
    smooth = onehot * (1 - args.label_smoothing) + args.label_smoothing / 7
    for epoch in range(start, args.epochs):
        began = time.time()
        order = np.random.default_rng((args.seed, epoch)).permutation(len(images))[:steps * args.batch]
        total_loss = 0.0
        for s, idx in enumerate(order.reshape(steps, args.batch)):
            rng = np.random.default_rng((args.seed, epoch, s))
            faces, _ = warp_batch(images[idx], rng, framing, args.detector_share, index=idx)
            # the teacher's answer is mirror-symmetric (its views include the flip), so it holds for either
            target = np.float32(1 - args.teacher_weight) * smooth[idx] + np.float32(args.teacher_weight) * teacher[idx]
            total_loss += float(step(tf.constant(faces[..., None]), tf.constant(target),
                                     tf.constant(class_weight[labels[idx]])))
            if s % 100 == 0:
                print(f"epoch {epoch + 1} step {s}/{steps} loss {total_loss / (s + 1):.4f} "
                      f"{(s + 1) * args.batch / (time.time() - began):.0f} faces/s", flush=True)
        np.savez(args.out / f"weights-{epoch + 1}.npz", **trainer.state())
        row = {"epoch": epoch + 1, "loss": round(total_loss / steps, 4), "seconds": round(time.time() - began, 1),
               "publictest": evaluate(trainer, val_images, val_labels),
               "publictest_jittered": evaluate(trainer, val_jittered.astype(np.uint8), val_labels)}
        with log_path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    return 0


def export(args: argparse.Namespace) -> int:
    """The last checkpoint's weights in the whole shipped graph, converted to float and int8 TFLite."""
    import tensorflow as tf
    from export_fer import full_integer

    from pi.metrics import report
    from pi.vision.evaluation import load_dataset
    from pi.vision.fer import FER_CLASSES, ExpressionClassifier

    checkpoints = sorted(args.out.glob("weights-*.npz"), key=lambda p: int(p.stem.split("-")[1]))
    if not checkpoints:
        raise SystemExit(f"no checkpoint in {args.out}")
    trainer = Trainer(args.model)
    trainer.load(np.load(checkpoints[-1]))
    serve = trainer.graph.function(trainer.weights)
    concrete = serve.get_concrete_function()
    train_images, _ = load_dataset(args.train)
    rng = np.random.default_rng(1234)
    calibration = train_images[rng.choice(len(train_images), args.calibration, replace=False)]

    def convert(int8: bool) -> bytes:
        converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], trainer.graph_module())
        if int8:
            full_integer(converter, calibration)
        return converter.convert()

    args.models_out.mkdir(parents=True, exist_ok=True)
    files = {"float": args.models_out / "fer_float.tflite", "int8": args.models_out / "fer_int8.tflite"}
    blobs = {name: convert(name == "int8") for name in files}  # convert both before replacing either
    for name, path in files.items():
        path.write_bytes(blobs[name])
    images, labels = load_dataset(args.val)
    meta_path = args.models_out / "fer.json"
    meta = json.loads(meta_path.read_text())
    measured, predictions, xnnpack = {}, {}, {}
    for name, path in files.items():
        clf = ExpressionClassifier(path, FER_CLASSES, images.shape[1], threads=2)
        predictions[name] = clf.predict(images).argmax(1)
        r = report(labels, predictions[name], list(FER_CLASSES))
        measured[name] = {"accuracy": round(r["accuracy"], 4), "macro_f1": round(r["macro_f1"], 4),
                          "per_class_recall": {c: v["recall"] for c, v in r["per_class"].items()}}
        if name == "int8":
            measured[name]["confusion"] = r["confusion"]
            details = clf._in
            meta["int8_input_quantization"] = {"dtype": str(np.dtype(details["dtype"])),
                                               "scale": float(details["quantization"][0]),
                                               "zero_point": int(details["quantization"][1])}
        xnnpack[name] = clf.xnnpack
    history = [json.loads(line) for line in (args.out / "history.jsonl").read_text().splitlines()]
    meta["files"] = {name: {"path": f"models/{p.name}", "bytes": p.stat().st_size} for name, p in files.items()}
    meta["xnnpack_accepts"] = xnnpack
    meta["publictest"] = measured
    meta["int8_agreement_with_float"] = round(float(np.mean(predictions["int8"] == predictions["float"])), 4)
    meta["description"] = meta["description"].split("; fine-tuned")[0] + \
        "; fine-tuned to the Haar detector's framing (scripts/finetune_fer.py, fine_tune)"
    meta["fine_tune"] = {
        "command": "python scripts/finetune_fer.py " + " ".join(sys.argv[1:]),
        "from": "the previous release's float graph (exported 2026-11-24), replayed by scripts/fer_graph.py",
        "epochs": len(history) - 1,
        "curve": history,
        "framing": ("each face's own Haar frame on the face upscaled and padded (HaarFrames), jittered by "
                    f"{args.haar_jitter}" if args.framing == "haar" else
                    "side ratio and centre shift drawn from models/fer_proxy.json geometry percentiles"),
    }
    meta["exported"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps({k: meta[k] for k in ("files", "publictest", "int8_agreement_with_float")}, indent=2)[:3000])
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return export(args) if args.export else train(args)


if __name__ == "__main__":
    sys.exit(main())
