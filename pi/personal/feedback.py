"""Fusing the sources with the wearer's personal models, and learning from carers' corrections.

A correction (request_id + true label) turns that detection's window features and face probabilities
into a labelled example for the user. Once enough have arrived, `refit_from_feedback` trains a candidate:
the physiology model on the user's sessions plus the older corrections, and a per-class bias on the face
model's log-probabilities (a calibration to this face). The newest corrections are held out; the candidate
is installed as a new version only if it scores better on them than the installed version. Every
installed version stays on disk and can be rolled back to.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from pi.errors import CommandError
from pi.personal import fusion
from pi.personal.model import FEATURES, ModelRegistry, PersonalModel, build_dataset, shipped_prior, softmax
from pi.vision.fer import FER_CLASSES

log = logging.getLogger(__name__)


def calibrate_face(face: np.ndarray | None, model: PersonalModel | None, emotions: Sequence[str]):
    """Apply the model's per-emotion face bias (if it has one) to a face distribution over `emotions`."""
    if face is None or model is None or "face_bias" not in model.data:
        return face
    bias = np.array([model.data["face_bias"].get(e, 0.0) for e in emotions])
    return softmax(fusion.log_probabilities(face) + bias)


def fused_distribution(face: np.ndarray | None, features: np.ndarray | None, model: PersonalModel | None,
                       emotions: Sequence[str], weights: dict) -> tuple[np.ndarray | None, dict]:
    """Pool the (calibrated) face and the personal physiology model; also return the per-source parts."""
    sources = {}
    if face is not None:
        sources["face"] = calibrate_face(face, model, emotions)
    if features is not None and model is not None and len(model.w) != len(features):
        # a model fitted before the feature set changed: answer without it rather than fail the detection
        log.warning("personal model v%d takes %d features, this device computes %d: run emotion-edge fit",
                    model.version, len(model.w), len(features))
        model = None
    if features is not None and model is not None:
        mapped = fusion.to_emotions(model.predict_proba(features), model.classes, emotions)
        if mapped is not None:
            sources["physiology"] = mapped
    return fusion.pool(sources, weights), sources


def feedback_examples(feedback: list, emotions: Sequence[str]
                      ) -> list[tuple[np.ndarray | None, np.ndarray | None, str]]:
    """(window features, face distribution over emotions, true label) per correction."""
    out = []
    for _, label, window, result in feedback:
        feats = [window.get(f"feature_{name}") for name in FEATURES]
        features = None if any(v is None for v in feats) else np.array(feats, float)
        probs = [result.get(f"face_{c}") for c in FER_CLASSES]
        face = None if any(p is None for p in probs) else fusion.to_emotions(probs, FER_CLASSES, emotions)
        out.append((features, face, label))
    return out


def fit_face_bias(examples, emotions: Sequence[str], l2: float = 0.05, steps: int = 300) -> dict:
    """Per-emotion additive bias on face log-probabilities minimising cross-entropy on the corrections."""
    rows = [(fusion.log_probabilities(face), emotions.index(label)) for _, face, label in examples
            if face is not None and label in emotions]
    bias = np.zeros(len(emotions))
    if rows:
        logp = np.array([r[0] for r in rows])
        onehot = np.eye(len(emotions))[[r[1] for r in rows]]
        for _ in range(steps):
            g = (softmax(logp + bias) - onehot).mean(axis=0) + l2 * bias
            bias -= 0.5 * g
    return {e: round(float(b), 4) for e, b in zip(emotions, bias)}


def score(model: PersonalModel | None, examples, emotions: Sequence[str], weights: dict) -> float:
    """Accuracy of the fused decision on labelled examples (examples no source can judge count wrong)."""
    hits = 0
    for features, face, label in examples:
        fused, _ = fused_distribution(face, features, model, emotions, weights)
        hits += fused is not None and emotions[int(np.argmax(fused))] == label
    return hits / max(1, len(examples))


def refit_from_feedback(cfg: dict, store, registry: ModelRegistry) -> dict:
    """Refit the user's models with the corrections; install only if better on held-out corrections."""
    user = cfg["device"]["user"]
    emotions = cfg["detect"]["emotions"]
    weights = fusion.source_weights(cfg["fusion"])
    examples = feedback_examples(store.feedback(user), emotions)
    fb = cfg["feedback"]
    if len(examples) < fb["min_examples"]:
        return {"refit": False, "reason": f"{len(examples)} of {fb['min_examples']} corrections so far"}
    n_hold = max(1, int(round(len(examples) * fb["holdout_fraction"])))
    train, held = examples[:-n_hold], examples[-n_hold:]
    current = registry.current()
    extra = [(f, label) for f, _, label in train if f is not None]
    records = store.records(user)
    ds = build_dataset(records, extra)
    if len(ds.classes) < 2:
        return {"refit": False, "reason": f"need examples of two labels, have {ds.classes}"}
    candidate = PersonalModel.train(ds, user, registry.next_version(), {"source": "feedback refit",
                                                                         "corrections": len(examples)},
                                    prior=shipped_prior())
    candidate.data["face_bias"] = fit_face_bias(train, emotions)
    before, after = score(current, held, emotions, weights), score(candidate, held, emotions, weights)
    report = {"refit": True, "held_out": len(held), "score_before": before, "score_after": after,
              "version_before": current.version if current else None}
    if after > before:
        candidate.data["evaluation"].update(held_out_score=after, previous_score=before)
        registry.save(candidate, install=True)
        report.update(installed=True, version=candidate.version)
        log.info("personal model v%d installed: held-out accuracy %.2f -> %.2f", candidate.version, before, after)
    else:
        report.update(installed=False, version=report["version_before"])
        log.info("refit not installed: held-out accuracy %.2f -> %.2f", before, after)
    return report


def apply_feedback(cfg: dict, store, registry: ModelRegistry, request_id: str, label: str, wall: float) -> dict:
    """Store a correction; refit after `feedback.min_examples`, then every `feedback.refit_every` more."""
    if store.detection(request_id) is None:
        raise CommandError(f"no detection with request_id {request_id!r} on this device")
    if label not in cfg["detect"]["emotions"]:
        raise CommandError(f"unknown label {label!r}; known: {', '.join(cfg['detect']['emotions'])}")
    user = cfg["device"]["user"]
    store.add_feedback(request_id, user, label, wall)
    count = len(store.feedback(user))
    fb = cfg["feedback"]
    due = count >= fb["min_examples"] and (count - fb["min_examples"]) % fb["refit_every"] == 0
    report = refit_from_feedback(cfg, store, registry) if due else {"refit": False}
    report["corrections"] = count
    return report
