#!/usr/bin/env python3
"""Leave-one-session-out accuracy of the personal physiology model on simulated people, as JSON.

`--protocol stress-predict` (the default) simulates the real Stress-Predict protocol (rest, then three
stress tasks each followed by rest: 7 sessions) with the spreads measured on the real recordings
(`drivers.sim.person.REAL_SPREAD`: between people, between one person's sessions, and in the size of
the stress effect), so its figure is comparable with `scripts/eval_stress_predict.py` on real bodies.
`--protocol emotions` is the older, easy check of the machinery:
each person gets their own skin-conductance baseline and heart-rate offset, `--reps` sessions of every
emotion plus one resting `baseline` session, recorded through the real signal chain (simulated hat ->
ADC driver -> sampler). The figures describe the pipeline on the simulator's physiology, which separates
emotions more cleanly than real bodies do: they are a check of the machinery, not a clinical claim.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from drivers.sim.person import REAL_SPREAD  # noqa: E402
from pi.personal.model import ModelRegistry, fit_user  # noqa: E402
from pi.service.simulated_sessions import simulate_session  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--people", type=int, default=6)
    p.add_argument("--reps", type=int, default=3, help="sessions per emotion")
    p.add_argument("--seconds", type=int, default=60, help="length of each session")
    p.add_argument("--emotions", default="happy,sad,angry,neutral")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--protocol", choices=("stress-predict", "emotions"), default="stress-predict")
    args = p.parse_args(argv)
    emotions = args.emotions.split(",")
    rng = np.random.default_rng(args.seed)
    people = []
    if args.protocol == "stress-predict":
        return stress_predict(args, rng)
    with tempfile.TemporaryDirectory() as tmp:
        for person in range(args.people):
            baseline_us, hr_offset = float(rng.uniform(1.5, 9.0)), float(rng.normal(0, 8))
            records = simulate_session("baseline", args.seconds, seed=int(rng.integers(1 << 30)),
                                       baseline_us=baseline_us, hr_offset=hr_offset, session_id="baseline")
            for rep in range(args.reps):
                for emotion in emotions:
                    records += simulate_session(emotion, args.seconds, seed=int(rng.integers(1 << 30)),
                                                baseline_us=baseline_us, hr_offset=hr_offset,
                                                session_id=f"{emotion}-{rep}")
            report, _ = fit_user(records, ModelRegistry(tmp, f"p{person}"))
            people.append({"baseline_us": round(baseline_us, 2), "hr_offset": round(hr_offset, 1),
                           "accuracy": round(report["accuracy"], 3), "macro_f1": round(report["macro_f1"], 3),
                           "majority_accuracy": round(report["majority_accuracy"], 3),
                           "sessions": report["sessions"], "installed": report["installed"]})
    f1 = [p["macro_f1"] for p in people]
    print(json.dumps({"emotions": emotions, "chance": round(1 / len(emotions), 3), "people": people,
                      "macro_f1_mean": round(float(np.mean(f1)), 3), "macro_f1_min": round(min(f1), 3)},
                     indent=2))
    return 0


PROTOCOL_START = 1_790_000_000.0


def simulate_stress_predict_person(rng: np.random.Generator, seconds: int, user: str = "sim") -> list[dict]:
    """One simulated wearer through rest/stress x3/rest with the real recordings' spreads."""
    s = REAL_SPREAD
    base = float(np.exp(rng.normal(np.log(3.0), s["log_scl_between_people"])))  # Grove range: a few µS
    hr = float(rng.normal(0, 8))
    d_scl = float(rng.normal(0, s["log_scl_stress_effect_sd"]))  # this person's deviation from the median effect
    d_hr = float(rng.normal(0, s["bpm_stress_effect_sd"]))
    records = []
    for k, label in enumerate(["rest", "stress", "rest", "stress", "rest", "stress", "rest"]):
        scl = base * float(np.exp(rng.normal(0, s["log_scl_between_sessions"])
                                  + (d_scl if label == "stress" else 0.0)))
        off = hr + float(rng.normal(0, s["bpm_between_sessions"])) + (d_hr if label == "stress" else 0.0)
        records += simulate_session(label, seconds, seed=int(rng.integers(1 << 30)), baseline_us=max(scl, 0.05),
                                    hr_offset=off, user=user, session_id=f"{user}-{k}-{label}",
                                    start_wall=PROTOCOL_START + k * seconds)  # worn through, as in the study
    return records


def stress_predict(args, rng: np.random.Generator) -> int:
    people = []
    with tempfile.TemporaryDirectory() as tmp:
        for person in range(args.people):
            records = simulate_stress_predict_person(rng, args.seconds, f"p{person}")
            report, _ = fit_user(records, ModelRegistry(tmp, f"p{person}"))
            people.append({"macro_f1": round(report["macro_f1"], 3), "accuracy": round(report["accuracy"], 3),
                           "majority_macro_f1": round(report["majority_macro_f1"], 3),
                           "sessions": report["sessions"], "installed": report["installed"]})
    f1 = [p["macro_f1"] for p in people]
    print(json.dumps({"protocol": "stress-predict", "classes": ["rest", "stress"], "people": people,
                      "seconds_per_session": args.seconds, "macro_f1_mean": round(float(np.mean(f1)), 3),
                      "macro_f1_min": round(min(f1), 3),
                      "majority_macro_f1_mean": round(float(np.mean([p["majority_macro_f1"] for p in people])), 3)},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
