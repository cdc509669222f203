#!/usr/bin/env python3
"""The personal physiology model and the PPG heart-rate path on real Empatica E4 recordings (Stress-Predict).

For each person: the folder is imported exactly as `emotion-edge import-e4 --stress-predict` does (EDA ->
skin_conductance, BVP -> bpm through the device's PPG chain), one session per labelled segment; then the
device's own `build_dataset` / `leave_one_session_out` (what `emotion-edge fit` runs) score stress vs rest
with every segment held out in turn. For contrast: a random 80/20 split of seconds (the seed paper's
protocol) and the majority class. The PPG comparison runs per 10-s window against the E4's own beat
intervals, with HeartPy on the same windows.

The model leans on the population prior (`models/physio_prior.json`, see pi.personal.model.PopulationPrior)
as `fit` does. It never scores a person with a prior fitted on them: a person the shipped prior was fitted
on gets the same fit refitted on the prior's other people (so scoring one of the 28 imports all of them;
use --cache), anyone else (people held back from us) gets the shipped prior unchanged, as a new wearer's
device would. `--write-prior PATH` fits the prior on the people given (how the shipped file was made:
`--write-prior models/physio_prior.json`); `--no-prior` scores each person on their own recordings alone.

Dataset: Iqbal T. et al., "Stress-Predict Dataset" (2022), MIT licence.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pi.ingest import e4  # noqa: E402
from pi.personal.model import (  # noqa: E402
    PRIOR_L2,
    PRIOR_WORTH_S,
    Dataset,
    PopulationPrior,
    build_dataset,
    fit_population_prior,
    leave_one_session_out,
    load_prior,
    random_split,
)
from pi.physiology.sampler import HR_QUALITY_MIN  # noqa: E402
from pi.resources import PHYSIO_PRIOR  # noqa: E402

PPG_WINDOW_S = 10
MIN_REF_BEATS = 5  # a window needs this many E4 beat intervals to have a reference rate
STRICTER_QUALITY = 0.7  # the device's earlier gate, for contrast


def ppg_windows(rec: e4.Recording, seconds: dict, segments: list[e4.Segment], heartpy: bool) -> list[dict]:
    """Per 10-s window: the E4's rate from its beat intervals, ours (+ quality), HeartPy's, and the label."""
    out = []
    bvp = rec.bvp.values[:, 0]
    fs = rec.bvp.rate
    if heartpy:
        import heartpy as hp
    for k in range(PPG_WINDOW_S - 1, len(seconds["end"]), PPG_WINDOW_S):
        end = seconds["end"][k]
        start = end - PPG_WINDOW_S
        label = next((s.label for s in segments if s.start <= start and end <= s.end), None)
        sel = (rec.ibi_times > start) & (rec.ibi_times <= end)
        ref = 60.0 / rec.ibi[sel].mean() if sel.sum() >= MIN_REF_BEATS else None
        ours = None if np.isnan(seconds["bpm"][k]) else float(seconds["bpm"][k])
        row = {"end": float(end), "label": label, "ref_bpm": ref, "bpm": ours,
               "quality": float(seconds["hr_quality"][k]),
               "accepted": ours is not None and seconds["hr_quality"][k] >= HR_QUALITY_MIN, "heartpy_bpm": None}
        if heartpy:
            i0 = int(round((start - rec.bvp.start) * fs))
            chunk = bvp[max(0, i0):i0 + int(PPG_WINDOW_S * fs)]
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    _, m = hp.process(chunk, fs)
                if np.isfinite(m["bpm"]) and 30 <= m["bpm"] <= 220:
                    row["heartpy_bpm"] = float(m["bpm"])
            except Exception:  # HeartPy raises on windows it cannot read (BadSignalWarning and others)
                pass
        out.append(row)
    return out


def ppg_summary(rows: list[dict]) -> dict:
    """MAE on accepted windows that have an E4 reference, acceptance overall and at rest, HeartPy's MAE.

    Accepted: the device's gate (pi.physiology.sampler.HR_QUALITY_MIN); `at_quality_0.7` repeats ours with the
    stricter gate the device used before.
    """
    out = _ppg_summary(rows)
    strict = [{**r, "accepted": r["bpm"] is not None and r["quality"] >= STRICTER_QUALITY} for r in rows]
    out[f"at_quality_{STRICTER_QUALITY}"] = {k: out_v for k, out_v in _ppg_summary(strict).items()
                             if k in ("mae_bpm", "mae_windows", "accepted_fraction", "accepted_fraction_rest")}
    return out


def _ppg_summary(rows: list[dict]) -> dict:
    ours = [abs(r["bpm"] - r["ref_bpm"]) for r in rows if r["accepted"] and r["ref_bpm"] is not None]
    hp_err = [abs(r["heartpy_bpm"] - r["ref_bpm"]) for r in rows if r["heartpy_bpm"] is not None
              and r["ref_bpm"] is not None]
    rest = [r for r in rows if r["label"] == e4.REST]
    return {"windows": len(rows), "windows_with_reference": sum(r["ref_bpm"] is not None for r in rows),
            "mae_bpm": float(np.mean(ours)) if ours else None, "mae_windows": len(ours),
            "accepted_fraction": float(np.mean([r["accepted"] for r in rows])) if rows else None,
            "accepted_fraction_rest": float(np.mean([r["accepted"] for r in rest])) if rest else None,
            "accepted_fraction_with_reference": (
                float(np.mean([r["accepted"] for r in rows if r["ref_bpm"] is not None]))
                if any(r["ref_bpm"] is not None for r in rows) else None),
            "heartpy_mae_bpm": float(np.mean(hp_err)) if hp_err else None, "heartpy_windows": len(hp_err)}


def load_subject(folder: Path, ppg: bool, heartpy: bool, cache: Path | None) -> tuple[Dataset, list[dict], int]:
    """One person imported as `import-e4 --stress-predict` does: the dataset `fit` sees, PPG windows, segments."""
    rec = e4.read_recording(folder)
    segments = e4.stress_predict_segments(folder, rec)
    cached = cache / f"{folder.name}.npz" if cache else None
    if cached is not None and cached.exists():
        seconds = dict(np.load(cached))
    else:
        seconds = e4.per_second(rec)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cached, **seconds)
    records = e4.session_records(rec, segments, folder.name.lower(), seconds=seconds)
    windows = ppg_windows(rec, seconds, segments, heartpy) if ppg else []
    return build_dataset(records), windows, len(segments)


def prior_for(name: str, people: dict[str, Dataset], shipped: PopulationPrior | None, worth_s: float | None
              ) -> PopulationPrior | None:
    """The population prior this person's model gets, never fitted on this person.

    A person the shipped prior was fitted on gets the same fit without them (leave-one-subject-out, from
    the shipped prior's other people); anyone else gets the shipped prior as it is, as on a device.
    Without a shipped prior (`--prior` absent), everyone else loaded here is the population.
    """
    if shipped is not None and name not in shipped.subjects:
        return shipped if worth_s is None else replace(shipped, worth_s=worth_s)
    pool_names = shipped.subjects if shipped is not None else list(people)
    pool = {n: people[n] for n in pool_names if n != name and n in people}
    if not pool:
        return None
    people_word = "person" if len(pool) == 1 else "people"
    return fit_population_prior(pool, l2=shipped.l2 if shipped is not None else PRIOR_L2,
                                worth_s=worth_s or (shipped.worth_s if shipped is not None else PRIOR_WORTH_S),
                                source=f"Stress-Predict without {name} ({len(pool)} {people_word})")


def evaluate_subject(name: str, ds: Dataset, prior: PopulationPrior | None, n_segments: int) -> dict:
    loso = leave_one_session_out(ds, prior)
    rand = random_split(ds, prior=prior)
    return {"subject": name, "segments": n_segments, "samples": loso["samples"],
            "macro_f1_loso": round(loso["macro_f1"], 4), "accuracy_loso": round(loso["accuracy"], 4),
            "macro_f1_random": round(rand["macro_f1"], 4), "macro_f1_majority": round(loso["majority_macro_f1"], 4),
            "prior": loso["prior"]}


def _rounded(d: dict) -> dict:
    return {k: (_rounded(v) if isinstance(v, dict) else round(v, 3) if isinstance(v, float) else v)
            for k, v in d.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", type=Path, help="the Stress-Predict folder (holding Raw_data/ and Processed_data/)")
    p.add_argument("--subjects", default=None, help="comma-separated, e.g. S02,S03 (default: all in Raw_data/)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-ppg", action="store_true", help="skip the heart-rate comparison")
    p.add_argument("--no-heartpy", action="store_true", help="skip HeartPy in the heart-rate comparison")
    p.add_argument("--cache", type=Path, default=None,
                   help="keep each person's per-second import here (npz) to rerun the model faster")
    p.add_argument("--prior", type=Path, default=None,
                   help=f"the population prior (default: the shipped {PHYSIO_PRIOR[0]}/{PHYSIO_PRIOR[1]})")
    p.add_argument("--no-prior", action="store_true", help="each person's own recordings only (the older model)")
    p.add_argument("--prior-worth", type=float, default=None,
                   help="override how many seconds of a wearer's own recordings the prior counts as")
    p.add_argument("--write-prior", type=Path, default=None,
                   help="fit the population prior on every person given and write it here (the shipped file)")
    args = p.parse_args(argv)
    raw = args.dataset / "Raw_data"
    available = sorted(d.name for d in raw.iterdir() if d.is_dir())
    names = args.subjects.split(",") if args.subjects else available
    missing = [n for n in names if n not in available]
    if missing:
        p.error(f"no such subject folder in {raw}: {', '.join(missing)}")
    shipped = None if args.no_prior or args.write_prior else load_prior(args.prior)
    # people the shipped prior was fitted on are scored with a prior fitted without them: load its others too
    needed = list(names)
    if args.write_prior is None and not args.no_prior:
        pool = (available if shipped is None else shipped.subjects if any(n in shipped.subjects for n in names)
                else [])
        absent = [n for n in pool if n not in available]
        if absent:
            print(f"warning: the prior's people {', '.join(absent)} are not in {raw}; their leave-one-out priors "
                  "are fitted without them", file=sys.stderr)
        needed += [n for n in pool if n not in needed and n in available]
    t0 = time.time()
    people: dict[str, Dataset] = {}
    windows_of: dict[str, list[dict]] = {}
    segments_of: dict[str, int] = {}
    for name in needed:
        scored = name in names
        ds, windows, n_segments = load_subject(raw / name, scored and not args.no_ppg,
                                               scored and not (args.no_ppg or args.no_heartpy), args.cache)
        people[name], windows_of[name], segments_of[name] = ds, windows, n_segments
    if args.write_prior:
        fitted = fit_population_prior(people, worth_s=args.prior_worth or PRIOR_WORTH_S,
                                     source=f"Stress-Predict, {len(people)} people (Iqbal et al. 2022, MIT)")
        args.write_prior.write_text(json.dumps(fitted.to_json(), indent=1) + "\n")
        print(f"wrote {args.write_prior}: fitted on {len(people)} people", file=sys.stderr)
        return 0
    rows, all_windows = [], []
    for name in names:
        prior = None if args.no_prior else prior_for(name, people, shipped, args.prior_worth)
        row = evaluate_subject(name, people[name], prior, segments_of[name])
        if not args.no_ppg:
            row["ppg"] = _rounded(ppg_summary(windows_of[name]))
        rows.append(row)
        all_windows += windows_of[name]
        if not args.json:
            line = (f"{name}: LOSO macro-F1 {row['macro_f1_loso']:.3f}  random split {row['macro_f1_random']:.3f}  "
                    f"majority {row['macro_f1_majority']:.3f}  ({row['samples']} s, {row['segments']} segments)")
            if "ppg" in row and row["ppg"]["mae_bpm"] is not None:
                line += f"  PPG MAE {row['ppg']['mae_bpm']:.1f} BPM, accepted {row['ppg']['accepted_fraction']:.2f}"
            print(line, flush=True)
    mean = lambda key: round(float(np.mean([r[key] for r in rows])), 4)  # noqa: E731
    out = {"dataset": str(args.dataset), "subjects": rows, "n_subjects": len(rows),
           "mean_macro_f1_loso": mean("macro_f1_loso"), "mean_macro_f1_random": mean("macro_f1_random"),
           "mean_macro_f1_majority": mean("macro_f1_majority"),
           "min_macro_f1_loso": round(min(r["macro_f1_loso"] for r in rows), 4),
           "prior": "none" if args.no_prior else "shipped" if shipped is not None else "fitted here",
           "seconds": round(time.time() - t0, 1)}
    if not args.no_ppg:
        out["ppg"] = _rounded(ppg_summary(all_windows))
    if args.json:
        print(json.dumps(out))
    else:
        print(f"mean over {len(rows)} people: LOSO macro-F1 {out['mean_macro_f1_loso']:.3f} (worst "
              f"{out['min_macro_f1_loso']:.3f}), random split {out['mean_macro_f1_random']:.3f}, majority "
              f"{out['mean_macro_f1_majority']:.3f}")
        if "ppg" in out:
            print("PPG per 10-s window against the E4's beat intervals: " + json.dumps(out["ppg"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
