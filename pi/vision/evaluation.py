"""`emotion-edge fer-eval`: accuracy, macro-F1, per-class precision/recall and the confusion matrix of the
expression model on any .npz in the FER2013 format (images uint8 N x 48 x 48, labels int); with
`--pipeline`, of the whole face path on full photos (N x H x W grey or N x H x W x 3 BGR): detection,
crop, views and classification as the daemon runs them."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pi.errors import ModelError
from pi.metrics import report
from pi.vision.face import FaceDetector, FacePipeline
from pi.vision.fer import ExpressionClassifier, FaceViews


def stratified_sample(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Indices of `n` items drawn at random within each class, in proportion to the class sizes (largest
    remainder), sorted. Dataset files are often sorted by class, so their first N items are one class."""
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * n / len(labels)
    take = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - take), kind="stable")[: n - take.sum()]:
        take[i] += 1
    picked = [rng.choice(np.flatnonzero(labels == c), k, replace=False) for c, k in zip(classes, take)]
    return np.sort(np.concatenate(picked))


def load_dataset(path: str | Path, limit: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of a FER-format .npz; with `limit`, a stratified random sample of that many."""
    try:
        data = np.load(path)
        images, labels = data["images"], data["labels"].astype(int)
    except (OSError, KeyError, ValueError) as exc:
        raise ModelError(f"{path} is not a FER-format .npz with 'images' and 'labels': {exc}") from None
    if limit is not None:
        keep = stratified_sample(labels, limit, seed)
        images, labels = images[keep], labels[keep]
    return images, labels


def evaluate(data: str | Path, model: str | Path, metadata: str | Path, limit: int | None = None,
             views: FaceViews = FaceViews(), threads: int = 1, seed: int = 0) -> dict:
    """The model's report on `data`; `views` > 1 measures test-time augmentation as the pipeline runs it."""
    classifier = ExpressionClassifier.from_metadata(model, metadata, threads)
    images, labels = load_dataset(data, limit, seed)
    probs = views.predict(classifier, images)
    result = report(labels, probs.argmax(axis=1), classifier.classes)
    result.update({"model": str(model), "data": str(data), "flip": views.flip, "scales": list(views.scales),
                   "runtime": classifier.runtime, "sample": None if limit is None else {"limit": limit, "seed": seed,
                                                                                       "stratified": True}})
    return result


def evaluate_pipeline(data: str | Path, model: str | Path, metadata: str | Path, detector: FaceDetector,
                      limit: int | None = None, views: FaceViews = FaceViews(), threads: int = 1,
                      seed: int = 0) -> dict:
    """The face pipeline's report on full photos: detection rate, then accuracy and macro-F1 over the faces
    it found, accuracy counting a photo without a face as wrong, per-class recall and confusion."""
    classifier = ExpressionClassifier.from_metadata(model, metadata, threads)
    images, labels = load_dataset(data, limit, seed)
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] != 3):
        raise ModelError(f"{data}: images must be N x H x W grey or N x H x W x 3 BGR, got {images.shape}")
    pipeline = FacePipeline(detector, classifier, views)
    predicted = np.full(len(labels), -1)
    for i, image in enumerate(images):
        outcome = pipeline.analyse(np.ascontiguousarray(image, np.uint8))
        if outcome.probabilities is not None:
            predicted[i] = int(outcome.probabilities.argmax())
    found = predicted >= 0
    on_found = report(labels[found], predicted[found], classifier.classes)
    result = {"n": int(len(labels)), "detected": int(found.sum()),
              "detection_rate": float(found.mean()) if len(labels) else 0.0,
              "accuracy_detected": on_found["accuracy"], "macro_f1_detected": on_found["macro_f1"],
              "accuracy_all": float(np.mean(predicted == labels)) if len(labels) else 0.0,
              "recall": {c: m["recall"] for c, m in on_found["per_class"].items()},
              "per_class": on_found["per_class"], "classes": on_found["classes"],
              "confusion": on_found["confusion"],
              "missed_per_class": {c: int(np.sum(~found & (labels == k))) for k, c in enumerate(classifier.classes)},
              "pipeline": {"detect_width": detector.detect_width, "min_face": detector.min_face,
                           "scale_factor": detector.scale_factor, "margin": detector.margin,
                           "align": detector.align, "normalise": detector.normalise, "pick": detector.pick},
              "model": str(model), "data": str(data), "flip": views.flip, "scales": list(views.scales),
              "normalised_view": views.normalised, "runtime": classifier.runtime,
              "sample": None if limit is None else {"limit": limit, "seed": seed, "stratified": True}}
    return result


def format_pipeline_report(r: dict) -> str:
    p = r["pipeline"]
    crop = "FER2013 framing" if p["margin"] is None else f"margin {p['margin']}"
    lines = [f"{r['data']}: {r['n']} photos, model {Path(r['model']).name} ({r['runtime']}); crop {crop}, "
             f"align {p['align']}, normalise {p['normalise']}, pick {p['pick']}; views: scales {r['scales']}"
             f"{' + mirror' if r['flip'] else ''}"
             f"{'' if r['normalised_view'] == 'none' else ' + ' + r['normalised_view'] + ' view'}",
             f"faces found {r['detected']}/{r['n']} ({r['detection_rate']:.4f})",
             f"on found faces: accuracy {r['accuracy_detected']:.4f}   macro-F1 {r['macro_f1_detected']:.4f}",
             f"counting a miss as wrong: accuracy {r['accuracy_all']:.4f}", ""]
    return "\n".join(lines) + _table(r)


def format_report(r: dict) -> str:
    lines = [f"{r['data']}: {r['n']} images, model {Path(r['model']).name} ({r['runtime']}), "
             f"views: scales {r['scales']}{' + mirror' if r['flip'] else ''}",
             f"accuracy {r['accuracy']:.4f}   macro-F1 {r['macro_f1']:.4f}", ""]
    return "\n".join(lines) + _table(r)


def _table(r: dict) -> str:
    lines = [f"{'class':<10}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for c, m in r["per_class"].items():
        lines.append(f"{c:<10}{m['precision']:>10.3f}{m['recall']:>10.3f}{m['f1']:>10.3f}{m['support']:>10}")
    lines += ["", "confusion (rows true, columns predicted): " + " ".join(c[:3] for c in r["classes"])]
    lines += [f"{c[:8]:<10}" + " ".join(f"{v:>5}" for v in row) for c, row in zip(r["classes"], r["confusion"])]
    return "\n".join(lines)
