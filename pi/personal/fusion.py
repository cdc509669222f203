"""From sources to one emotion.

Each available source gives a probability distribution over the configured emotions; they are combined
by weighted log-linear pooling, p(e) ∝ Π_s p_s(e)^w_s, which lets a confident source dominate an unsure
one and reduces to the source itself when only one is there. A fused top probability under the threshold
answers `uncertain` instead of guessing. With no source, the answer is `unknown`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

EPS = 1e-6  # the smallest probability a source may claim: log(0) would veto an emotion outright


def log_probabilities(p: np.ndarray) -> np.ndarray:
    """log p with p floored at EPS: the one place where a source's zeros are softened."""
    return np.log(np.clip(p, EPS, 1.0))


def source_weights(fusion_cfg: Mapping[str, float]) -> dict[str, float]:
    """The pooling weight of each source, from the config's `fusion` section."""
    return {"face": fusion_cfg["face_weight"], "physiology": fusion_cfg["physiology_weight"]}


def to_emotions(probabilities: Sequence[float] | np.ndarray, classes: Sequence[str],
                emotions: Sequence[str]) -> np.ndarray | None:
    """Express a source's distribution over its own classes as one over the configured emotions.

    Classes outside the set (fear or disgust when the set is happy/sad/angry/neutral) are dropped, as the
    person is known to be in one of the configured states; an emotion the source does not know gets an
    uninformative share (the mean), so pooling leaves that emotion to the other sources. None when the
    source knows none of the emotions.
    """
    index = {c: i for i, c in enumerate(classes)}
    known = [e for e in emotions if e in index]
    if not known:
        return None
    picked = np.array([probabilities[index[e]] for e in known], dtype=float)
    if picked.sum() <= 0:
        return None
    picked = picked / picked.sum() * len(known) / len(emotions)
    filler = 1.0 / len(emotions)
    out = np.array([picked[known.index(e)] if e in index else filler for e in emotions])
    return out / out.sum()


def pool(sources: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray | None:
    """Weighted log-linear pooling of distributions over the same emotions; None with no source."""
    if not sources:
        return None
    log_p = np.sum([weights.get(name, 1.0) * log_probabilities(p) for name, p in sources.items()], axis=0)
    log_p = log_p - np.max(log_p)
    fused = np.exp(log_p)
    return fused / fused.sum()


def decide(fused: np.ndarray | None, emotions: Sequence[str], uncertain_below: float) -> tuple[str, float | None]:
    """The named emotion and its confidence, `uncertain` under the threshold, `unknown` with no source."""
    if fused is None:
        return "unknown", None
    best = int(np.argmax(fused))
    confidence = float(fused[best])
    return (emotions[best] if confidence >= uncertain_below else "uncertain"), confidence


def arousal_rule(skin_conductance: float | None, bpm: float | None) -> str:
    """A clearly-marked population rule (not personalised, not an emotion): arousal from BPM and SCL.

    high: BPM >= 90 or conductance >= 10 µS; low: BPM <= 62 and conductance <= 3 µS; else moderate.
    """
    if skin_conductance is None and bpm is None:
        return "unknown"
    if (bpm is not None and bpm >= 90) or (skin_conductance is not None and skin_conductance >= 10):
        return "high"
    if (bpm is None or bpm <= 62) and (skin_conductance is None or skin_conductance <= 3):
        return "low"
    return "moderate"


AROUSAL_RULE_NAME = "population-thresholds-v1"
