#!/usr/bin/env python3
"""Leave-one-session-out accuracy of the personal physiology model on simulated people, as JSON.

Each person gets their own skin-conductance baseline and heart-rate offset, `--reps` sessions of every
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
from pi.personal.model import ModelRegistry, fit_user  # noqa: E402
from pi.service.simulated_sessions import simulate_session  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--people", type=int, default=6)
    p.add_argument("--reps", type=int, default=3, help="sessions per emotion")
    p.add_argument("--seconds", type=int, default=60, help="length of each session")
    p.add_argument("--emotions", default="happy,sad,angry,neutral")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    emotions = args.emotions.split(",")
    rng = np.random.default_rng(args.seed)
    people = []
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


if __name__ == "__main__":
    sys.exit(main())
