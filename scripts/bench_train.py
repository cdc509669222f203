#!/usr/bin/env python3
"""Training throughput of the FER hybrid on this machine, by memory allocator and by feed, side by side, as JSON.

Each allocator gets its own process (glibc's malloc as the system gives it; tcmalloc and jemalloc through
LD_PRELOAD where installed), and inside it `fit` is fed the same augmented epochs either as arrays (what
train_fer.py does, `epoch_batches`) or batch by batch from a Python generator (what a PyDataset amounts
to), the feeds alternating so that both see the same machine load. Needs the `train` extra (TensorFlow).

    python scripts/bench_train.py --train ../shared/datasets/fer2013/fer2013_training.npz [--images 3584]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


ALLOCATORS = {"glibc": None, "tcmalloc": "libtcmalloc_minimal.so.4", "jemalloc": "libjemalloc.so.2"}
LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib")


def find_library(name: str) -> str | None:
    return next((str(Path(d) / name) for d in LIBRARY_DIRS if (Path(d) / name).exists()), None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", required=True, type=Path, help="training .npz (images uint8 Nx48x48, labels)")
    p.add_argument("--images", type=int, default=3584, help="training faces per measured epoch")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--rounds", type=int, default=2, help="measured epochs per feed, alternating")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # measure in this process only
    args = p.parse_args(argv)
    if not args.one:
        return compare_allocators(args, argv if argv is not None else sys.argv[1:])
    print(json.dumps(measure_feeds(args)))
    return 0


def compare_allocators(args, argv: list[str]) -> int:
    """One child process per installed allocator, the same measurement in each."""
    results, missing = {}, []
    for name, library in ALLOCATORS.items():
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        env.pop("LD_PRELOAD", None)  # glibc's child must not inherit an allocator this process was started with
        if library:
            path = find_library(library)
            if path is None:
                missing.append(f"{name} ({library})")
                continue
            env["LD_PRELOAD"] = path
        out = subprocess.run([sys.executable, __file__, *argv, "--one"], env=env, check=True,
                             stdout=subprocess.PIPE, text=True).stdout  # stderr passes through
        results[name] = json.loads(out.strip().splitlines()[-1])
    glibc = results["glibc"]["train_images_per_s"]["arrays"]
    print(json.dumps({
        "keras": results["glibc"]["keras"], "backend": results["glibc"]["backend"], "cpus": os.cpu_count(),
        "width": args.width, "batch": args.batch, "images_per_epoch": results["glibc"]["images_per_epoch"],
        "rounds": args.rounds, "by_allocator": {k: {f: v["train_images_per_s"][f] for f in ("arrays", "generator")}
                                                 for k, v in results.items()},
        "system_cpu_share": {k: v["system_cpu_share"] for k, v in results.items()},
        "arrays_speedup_over_glibc": {k: round(v["train_images_per_s"]["arrays"] / glibc, 2)
                                      for k, v in results.items()},
        "all_rounds": {k: v["all_rounds"] for k, v in results.items()},
        "not_installed": missing,
    }, indent=2))
    return 0


def measure_feeds(args) -> dict:
    """Train images/s in this process, arrays against a generator; and the share of CPU time spent in the
    kernel (page faults from a malloc that hands large tensors back to the system show up there)."""
    import keras
    from fer_model import CLASSES, build_hybrid
    from train_fer import epoch_batches

    with np.load(args.train) as data:
        pick = np.random.default_rng(0).choice(len(data["labels"]), args.images, replace=False)
        faces, labels = data["images"][pick].astype(np.float32), data["labels"][pick]
    targets = np.eye(len(CLASSES), dtype=np.float32)[labels]
    weights = np.ones(len(labels), np.float32)
    keras.utils.set_random_seed(0)
    model = build_hybrid(width=args.width)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="categorical_crossentropy", metrics=["accuracy"])

    def arrays(epoch: int) -> dict:
        x, t, w = epoch_batches(faces, targets, weights, args.batch, 0, epoch)
        return dict(x=x, y=t, sample_weight=w, batch_size=args.batch, shuffle=False)

    def generator(epoch: int) -> dict:
        x, t, w = epoch_batches(faces, targets, weights, args.batch, 0, epoch)
        steps = len(x) // args.batch
        parts = (slice(i * args.batch, (i + 1) * args.batch) for i in range(steps))
        return dict(x=((x[part], t[part], w[part]) for part in parts), steps_per_epoch=steps)

    feeds = {"arrays": arrays, "generator": generator}
    rates: dict[str, list[float]] = {name: [] for name in feeds}
    trained = len(faces) // args.batch * args.batch
    for round_ in range(args.rounds + 1):  # round 0 traces each feed's train function: not counted
        for name, feed in feeds.items():
            kwargs = feed(round_)
            start = time.perf_counter()
            model.fit(**kwargs, epochs=1, verbose=0)
            if round_:
                rates[name].append(trained / (time.perf_counter() - start))
    usage = os.times()
    medians = {name: round(statistics.median(r), 1) for name, r in rates.items()}
    return {
        "keras": keras.__version__, "backend": keras.backend.backend(), "images_per_epoch": trained,
        "train_images_per_s": medians, "all_rounds": {k: [round(v, 1) for v in r] for k, r in rates.items()},
        "system_cpu_share": round(usage.system / (usage.user + usage.system), 3),
    }


if __name__ == "__main__":
    sys.exit(main())
