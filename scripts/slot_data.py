#!/usr/bin/env python3
"""Pack FER2013 small enough to travel to a lent GPU machine, losslessly, and unpack it there.

The device tool sends the working tree and its carried paths, 64 MiB in all, and the checkout itself is about
10 MB (the shipped .tflite files). FER2013 Training and PublicTest are 69 MB as .npz and 58 MB under xz -9;
OpenCV's lossless PNG, WebP and JPEG 2000 do no better (52-54 MB for Training). What fits: drop the exact
duplicate faces of each split (1,236 in Training, stored once with an index), replace each pixel by its
residual from LOCO-I's median edge predictor (JPEG-LS's, from the left, upper and upper-left pixels), and xz
the residuals with literal-context settings for image bytes (lc=4, pb=0): about 47 MB for Training, and the
decoded arrays are bit-identical (checked at pack time).

    python scripts/slot_data.py prepare     # here: .slot/fer2013.xz and the Keras wheels, in the checkout
    python3 scripts/slot_data.py unpack .slot/fer2013.xz /tmp/fer2013   # there: the .npz files again
"""
from __future__ import annotations

import argparse
import io
import json
import lzma
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARED_FER = ROOT.parent / "shared" / "datasets" / "fer2013"
SPLITS = ("fer2013_training", "fer2013_publictest")
FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "lc": 4, "lp": 0, "pb": 0}]
# Keras and the two packages it needs that the GPU image lacks (KINDS.md lists the image's packages)
WHEELS = ("keras==3.15.1", "namex==0.1.0", "optree==0.20.0")


def _neighbours(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = np.zeros_like(images)
    b = np.zeros_like(images)
    c = np.zeros_like(images)
    a[:, :, 1:] = images[:, :, :-1]
    b[:, 1:, :] = images[:, :-1, :]
    c[:, 1:, 1:] = images[:, :-1, :-1]
    return a, b, c


def _med(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """LOCO-I's median edge detector: min(a, b) above an edge, max(a, b) below, a + b - c otherwise."""
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    return np.where(c >= hi, lo, np.where(c <= lo, hi, a + b - c))


def residuals(images: np.ndarray) -> np.ndarray:
    """uint8 residuals (pixel - prediction mod 256) of a uint8 (N, H, W) stack."""
    x = images.astype(np.int16)
    return ((x - _med(*_neighbours(x))) % 256).astype(np.uint8)


def reconstruct(res: np.ndarray) -> np.ndarray:
    """Inverse of `residuals`: pixel by pixel in raster order, each step vectorised over all faces."""
    n, h, w = res.shape
    out = np.zeros((n, h, w), np.int16)
    r = res.astype(np.int16)
    zero = np.zeros(n, np.int16)
    for y in range(h):
        for x in range(w):
            a = out[:, y, x - 1] if x else zero
            b = out[:, y - 1, x] if y else zero
            c = out[:, y - 1, x - 1] if x and y else zero
            out[:, y, x] = (r[:, y, x] + _med(a, b, c)) % 256
    return out.astype(np.uint8)


def pack(splits: dict[str, dict[str, np.ndarray]]) -> bytes:
    """Serialise {split: npz arrays} into one xz stream (faces deduplicated, residual-coded)."""
    arrays: dict[str, np.ndarray] = {}
    meta = {}
    for name, data in splits.items():
        images = np.asarray(data["images"], np.uint8)
        flat = images.reshape(len(images), -1)
        unique, first, inverse = np.unique(flat, axis=0, return_index=True, return_inverse=True)
        order = np.argsort(first)  # keep the faces in their first-seen order (the residuals compress better)
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        arrays[f"{name}/residuals"] = residuals(unique[order].reshape(-1, *images.shape[1:]))
        arrays[f"{name}/index"] = rank[inverse.ravel()].astype(np.int32)
        meta[name] = [k for k in data if k != "images"]
        for key in meta[name]:
            arrays[f"{name}/{key}"] = np.asarray(data[key])
    buf = io.BytesIO()
    np.savez(buf, meta=np.array(json.dumps(meta)), **arrays)
    return lzma.compress(buf.getvalue(), format=lzma.FORMAT_XZ, filters=FILTERS)


def unpack(blob: bytes) -> dict[str, dict[str, np.ndarray]]:
    """Inverse of `pack`: {split: arrays} with the original `images` (uint8 N×H×W) and every other field."""
    with np.load(io.BytesIO(lzma.decompress(blob))) as z:
        meta = json.loads(str(z["meta"]))
        out = {}
        for name, keys in meta.items():
            faces = reconstruct(z[f"{name}/residuals"])
            out[name] = {"images": faces[z[f"{name}/index"]], **{k: z[f"{name}/{k}"] for k in keys}}
    return out


def prepare(source: Path, slot: Path) -> None:
    """Write `slot`/fer2013.xz (checked to decode bit-identical) and the wheels the GPU machine lacks."""
    slot.mkdir(parents=True, exist_ok=True)
    splits = {}
    for name in SPLITS:
        with np.load(source / f"{name}.npz") as data:
            splits[name] = {k: data[k] for k in data.files}
    t0 = time.time()
    blob = pack(splits)
    back = unpack(blob)
    for name, data in splits.items():
        for key, value in data.items():
            if not np.array_equal(back[name][key], value):
                raise SystemExit(f"round trip changed {name}/{key}: not written")
    (slot / "fer2013.xz").write_bytes(blob)
    print(f"{slot / 'fer2013.xz'}: {len(blob) / 1e6:.1f} MB, lossless, {time.time() - t0:.0f} s", flush=True)
    wheels = slot / "whl"
    wheels.mkdir(exist_ok=True)
    # the device README's download line: cp312 manylinux wheels for the GPU image's python3
    platforms = [f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                                             "manylinux2014_x86_64", "manylinux1_x86_64")]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(wheels), *WHEELS],
                   check=True)
    total = sum(p.stat().st_size for p in slot.rglob("*") if p.is_file())
    print(f"{slot}: {total / 1e6:.1f} MB to carry", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="pack ../shared's FER2013 and download the wheels into .slot/")
    prep.add_argument("--source", type=Path, default=SHARED_FER)
    prep.add_argument("--slot", type=Path, default=ROOT / ".slot")
    unp = sub.add_parser("unpack", help="write the .npz files back from a pack")
    unp.add_argument("pack", type=Path)
    unp.add_argument("dest", type=Path)
    args = p.parse_args(argv)
    if args.command == "prepare":
        prepare(args.source, args.slot)
        return 0
    t0 = time.time()
    args.dest.mkdir(parents=True, exist_ok=True)
    for name, arrays in unpack(args.pack.read_bytes()).items():
        np.savez(args.dest / f"{name}.npz", **arrays)
        print(f"{args.dest / name}.npz: {len(arrays['images'])} faces", flush=True)
    print(f"unpacked in {time.time() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
