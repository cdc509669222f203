"""The personal physiology model: how this wearer's skin conductance and heart rate look in each state.

Physiology differs between people, so each user gets their own model, but one person's few sessions are
too few to learn from alone (they drift), so it leans on what other people's bodies showed:
- features of the wearer's recent past (`series_features`): BPM mean over 30/60/120 s and its 30-s spread,
  the slope of ln conductance over 30/60/120 s, the last minute's ln conductance, and the last minute's BPM
  and ln conductance relative to the trailing 5, 10 and 20 minutes (chosen on real E4 recordings);
- the history runs across sessions worn one after another (`timelines`), as on the device;
- normalised against the user's own baseline: the `baseline`-labelled sessions when there are any,
  otherwise the user's statistics over all sessions;
- a class-weighted multinomial logistic regression (numpy only, it trains in well under a second on a Pi)
  penalised towards a population prior where one exists for the wearer's classes (`PopulationPrior`,
  shipped for stress vs rest), otherwise by an L2 penalty chosen per wearer;
- evaluated leave-one-session-out, because neighbouring seconds are nearly identical and a random split
  would grade the model on copies of its training data.
Models are small JSON files, versioned per user; `current.json` names the installed version.
"""
from __future__ import annotations

import datetime
import json
import os
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pi.errors import NoPriorWarning
from pi.metrics import report
from pi.physiology.sampler import HR_QUALITY_MIN
from pi.resources import PHYSIO_PRIOR, shipped

FEATURES = ("bpm_mean", "bpm_std", "bpm_mean_60", "bpm_mean_120", "scl_log_slope", "scl_log_slope_60",
            "scl_log_slope_120", "scl_log_mean_60", "bpm_rel_300", "bpm_rel_600", "bpm_rel_1200",
            "scl_log_rel_300", "scl_log_rel_600", "scl_log_rel_1200")
WINDOW_S = 30  # the short scale; `bpm_mean`, `bpm_std` and `scl_log_slope` are over the last WINDOW_S s
SCALES = (WINDOW_S, 60, 120)  # BPM mean and ln-SCL slope at each
LEVEL_S = 60  # "now" for the level features: the mean of the last minute ...
RELATIVE_S = (300, 600, 1200)  # ... and that mean minus the wearer's own mean over the trailing 5, 10, 20 min
HISTORY_S = max(RELATIVE_S)  # a window's features look back this many seconds
MAX_GRID_S = 86_400  # the longest timeline laid on one grid (a day: ~10 MB of features on a Pi)
MIN_VALID = 5
MIN_HR_QUALITY = HR_QUALITY_MIN  # a second whose beat intervals were mostly rejected has no trustworthy BPM
L2_GRID = (0.01, 0.1, 1.0)  # the penalty is chosen per wearer by an inner leave-one-session-out
L2 = 0.1  # used where there are too few sessions to choose
Z_CLIP = 10.0
BASELINE_LABEL = "baseline"
_CHUNK = 4096  # rows of trailing windows materialised at once (bounded memory on a Pi)


def _trailing_windows(v: np.ndarray, n: int, rows: slice) -> np.ndarray:
    """The last `n` values up to and including each row in `rows`, NaN-padded before the start."""
    start, stop = rows.start, rows.stop
    lo = start - n + 1
    part = v[max(0, lo):stop]
    if lo < 0:
        part = np.concatenate([np.full(-lo, np.nan), part])
    return np.lib.stride_tricks.sliding_window_view(part, n)


def _trailing_mean(v: np.ndarray, n: int) -> np.ndarray:
    """Mean of the valid values among the last `n` at every row (NaN where there are none), via cumulative sums."""
    ok = ~np.isnan(v)
    centre = float(v[ok].mean()) if ok.any() else 0.0  # centred sums keep the differences exact on long runs
    count = np.concatenate([[0.0], np.cumsum(ok)])
    total = np.concatenate([[0.0], np.cumsum(np.where(ok, v - centre, 0.0))])
    i = np.arange(1, len(v) + 1)
    j = np.maximum(0, i - n)
    c = count[i] - count[j]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(c > 0, (total[i] - total[j]) / c + centre, np.nan)


def series_features(scl: Sequence[float] | np.ndarray, bpm: Sequence[float] | np.ndarray) -> np.ndarray:
    """Features at every second of a contiguous per-second series (NaN for a missing value); a row is NaN if sparse.

    Measured on real E4 recordings (Stress-Predict, README): absolute conductance drifts through a session
    by more than stress moves it, so conductance enters as the slope of its logarithm (relative rise,
    independent of the wearer's µS level) over 30, 60 and 120 s, and as the last minute's ln SCL, both on
    its own and relative to the wearer's trailing 5, 10 and 20 minutes; heart rate as its mean over 30, 60
    and 120 s, its 30-s spread and the last minute relative to the trailing 5, 10 and 20 minutes. A window shorter
    than a scale (the start of a recording) uses what there is, so the relative terms start near zero.
    """
    bpm = np.asarray(bpm, dtype=float)
    scl = np.asarray(scl, dtype=float)
    log_scl = np.full(len(scl), np.nan)
    positive = scl > 0
    log_scl[positive] = np.log(scl[positive])
    n = len(bpm)
    out = np.full((n, len(FEATURES)), np.nan)
    valid = np.ones(n, dtype=bool)
    for lo in range(0, n, _CHUNK):
        rows = slice(lo, min(n, lo + _CHUNK))
        cols = []
        for s in SCALES:
            h = _trailing_windows(bpm, s, rows)
            ok = ~np.isnan(h)
            valid[rows] &= ok.sum(axis=1) >= MIN_VALID
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.nansum(h, axis=1) / ok.sum(axis=1)
                cols.append(mean)
                if s == WINDOW_S:
                    cols.append(np.sqrt(np.nansum((h - mean[:, None]) ** 2, axis=1) / ok.sum(axis=1)))
        for s in SCALES:
            g = _trailing_windows(log_scl, s, rows)
            ok = ~np.isnan(g)
            c = ok.sum(axis=1)
            valid[rows] &= c >= MIN_VALID
            t = np.where(ok, np.arange(s, dtype=float), 0.0)
            with np.errstate(invalid="ignore", divide="ignore"):
                t_mean = t.sum(axis=1) / c
                g_mean = np.nansum(g, axis=1) / c
                dt = np.where(ok, t - t_mean[:, None], 0.0)
                dg = np.where(ok, g - g_mean[:, None], 0.0)
                cols.append((dt * dg).sum(axis=1) / np.maximum((dt * dt).sum(axis=1), 1e-9))
        out[rows, :len(cols)] = np.column_stack(cols)
    k = len(SCALES) * 2 + 1
    bpm_now, scl_now = _trailing_mean(bpm, LEVEL_S), _trailing_mean(log_scl, LEVEL_S)
    out[:, k] = scl_now
    for i, s in enumerate(RELATIVE_S):
        out[:, k + 1 + i] = bpm_now - _trailing_mean(bpm, s)
        out[:, k + 1 + len(RELATIVE_S) + i] = scl_now - _trailing_mean(log_scl, s)
    out[~valid] = np.nan
    return out


def window_features(scl: Sequence[float | None], bpm: Sequence[float | None]) -> np.ndarray | None:
    """Features of the trailing window of per-second values (None where a second had none); None if sparse.

    The same computation as `series_features` (which the training uses), for its last second.
    """
    tail = [(np.nan if a is None else a, np.nan if b is None else b)
            for a, b in zip(list(scl)[-HISTORY_S:], list(bpm)[-HISTORY_S:])]
    if len(tail) < MIN_VALID:
        return None
    arr = np.array(tail, dtype=float)
    row = series_features(arr[:, 0], arr[:, 1])[-1]
    return None if np.isnan(row).any() else row


def _bpm_of(record: dict) -> float | None:
    return record["bpm"] if record.get("hr_quality", 1.0) >= MIN_HR_QUALITY else None


def _wall(record: dict) -> float:
    return datetime.datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()


@dataclass
class _Run:
    """Records of one session that the wall clock and seq agree are continuous, laid out by seq."""

    first: float  # wall time of the first record
    last: float  # wall time of the last record
    records: list[dict]
    slots: np.ndarray  # grid second of each record from the run's start: seq - first seq


def _runs(recs: list[dict]) -> list[_Run]:
    """One session's records (sorted by seq) cut where its wall clock cannot be trusted as one timeline.

    A Pi without a real-time clock steps its clock when NTP syncs, days forward or some seconds back, even
    inside a session: the session is cut where the wall time goes backwards or jumps ahead by more than the
    history the features use (HISTORY_S), and where seq skips that much. Within a run the records are
    laid out by seq, the device's own count of seconds, so a smaller step neither stretches nor folds it.
    """
    walls = np.array([_wall(r) for r in recs])
    seqs = np.array([int(r["seq"]) for r in recs])
    step_wall, step_seq = np.diff(walls), np.diff(seqs)
    cut = (step_wall < 0) | (step_wall > HISTORY_S) | (step_seq > HISTORY_S)
    bounds = [0, *(np.flatnonzero(cut) + 1).tolist(), len(recs)]
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        slots = seqs[lo:hi] - seqs[lo]
        # a single run longer than a grid may be (days worn without a break) goes on as further runs
        for part in range(0, int(slots[-1]) + 1, MAX_GRID_S):
            keep = np.flatnonzero((slots >= part) & (slots < part + MAX_GRID_S))
            if len(keep):
                i, j = lo + keep[0], lo + keep[-1]
                out.append(_Run(float(walls[i]), float(walls[j]), recs[i:j + 1], slots[keep] - slots[keep[0]]))
    return out


def timelines(records: list[dict]) -> list[tuple[list[dict], np.ndarray]]:
    """The wearer's records as continuous timelines (records, grid second of each): sessions in sequence share history.

    A session joins the timeline that ran last when it starts after every earlier session's last second
    and within HISTORY_S of it, as on a device worn through a protocol (the trailing minutes are the
    wearer's recent past, whatever the session); it is laid out from its own start, rounded to the grid,
    and never before the timeline's last second (sessions half a second apart must not share one).
    Sessions that overlap in time (simulations, one period imported twice) each stand alone: also one that
    starts after a short session but inside a long one. So does the part of a session after a wall-clock
    step (`_runs`). No timeline spans more than MAX_GRID_S seconds.
    """
    by_session: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_session[r["session_id"]].append(r)
    runs: list[_Run] = []
    for recs in by_session.values():
        recs.sort(key=lambda r: r["seq"])
        runs += _runs(recs)
    runs.sort(key=lambda run: (run.first, run.last))
    joined: list[tuple[float, list[dict], list[np.ndarray], int]] = []  # start wall, records, slots, grid size
    end, latest = -np.inf, -1  # the last second seen so far, and the timeline it belongs to
    for run in runs:
        if joined and end < run.first <= end + HISTORY_S:
            start, recs, slots, size = joined[latest]
            offset = max(int(round(run.first - start)), size)
            if offset + int(run.slots[-1]) < MAX_GRID_S:
                joined[latest] = (start, recs + run.records, [*slots, run.slots + offset],
                                  offset + int(run.slots[-1]) + 1)
                end = run.last
                continue
        joined.append((run.first, list(run.records), [run.slots], int(run.slots[-1]) + 1))
        if run.last > end:
            end, latest = run.last, len(joined) - 1
    return [(recs, np.concatenate(slots)) for _, recs, slots, _ in joined]


def timeline_samples(timeline: list[dict], slots: np.ndarray) -> list[np.ndarray | None]:
    """Features for every record of one timeline (None where its window is too sparse).

    The records are laid on a one-second grid at `slots` (from `timelines`), so a gap is missing seconds,
    as on the device; a grid longer than MAX_GRID_S is refused rather than allowed to exhaust memory.
    """
    if not timeline:
        return []
    size = int(slots.max()) + 1
    if slots.min() < 0 or size > MAX_GRID_S:
        raise ValueError(f"a timeline's grid must lie within 0..{MAX_GRID_S} s, got {slots.min()}..{size - 1} "
                         "(lay records out with `timelines`)")
    scl, bpm = np.full(size, np.nan), np.full(size, np.nan)
    for k, r in zip(slots, timeline):
        v, b = r["skin_conductance"], _bpm_of(r)
        scl[k] = np.nan if v is None else v
        bpm[k] = np.nan if b is None else b
    feats = series_features(scl, bpm)
    return [None if np.isnan(feats[k]).any() else feats[k] for k in slots]


@dataclass
class Dataset:
    x: np.ndarray  # raw features, one row per second
    y: np.ndarray  # class index
    session: np.ndarray  # session id per row
    classes: list[str]
    baseline_mu: np.ndarray
    baseline_sd: np.ndarray
    baseline_source: str
    weight: np.ndarray  # per-row weight: 1 for session seconds, a whole session's worth for a correction


def build_dataset(records: list[dict], extra: Sequence[tuple[np.ndarray, str]] = ()) -> Dataset:
    """A user's records as feature rows (by session, with shared history: `timelines`) and baseline statistics.

    `extra` holds (raw features, label) examples from carer feedback; each is its own 'session' and
    weighs as much as an average recorded session, since a correction is fresh evidence about the wearer
    as they are now, while a session contributes one row per second.
    """
    rows, labels, sessions, baseline_rows = [], [], [], []
    for timeline, slots in timelines(records):
        for r, features in zip(timeline, timeline_samples(timeline, slots)):
            if features is None:
                continue
            if r["mood"] == BASELINE_LABEL:
                baseline_rows.append(features)
                continue
            rows.append(features)
            labels.append(r["mood"])
            sessions.append(r["session_id"])
    per_session = len(rows) / max(1, len(set(sessions)))
    weight = [1.0] * len(rows)
    for i, (features, label) in enumerate(extra):
        rows.append(np.asarray(features, float))
        labels.append(label)
        sessions.append(f"feedback-{i}")
        weight.append(max(1.0, per_session))
    classes = sorted(set(labels))
    x = np.array(rows, dtype=float).reshape(-1, len(FEATURES))
    source_rows, source = (np.array(baseline_rows), "baseline sessions") if baseline_rows else (x, "all sessions")
    mu = source_rows.mean(axis=0) if len(source_rows) else np.zeros(len(FEATURES))
    n_session_rows = len(x) - len(extra)
    if len(extra) and n_session_rows:
        # Drift: bodies change (season, medication, a new electrode position). Corrections show where each
        # state lies now; shift the recorded sessions (and the baseline) by the mean displacement of the
        # corrections from their class's recorded centre, so old and new evidence agree.
        y_all = [classes.index(label) for label in labels]
        centres = {c: x[:n_session_rows][np.array(y_all[:n_session_rows]) == c].mean(axis=0)
                   for c in set(y_all[:n_session_rows])}
        shifts = [x[i] - centres[y_all[i]] for i in range(n_session_rows, len(x)) if y_all[i] in centres]
        if shifts:
            offset = np.mean(shifts, axis=0)
            x[:n_session_rows] += offset
            mu = mu + offset
            source += " shifted by corrections"
    sd = source_rows.std(axis=0) if len(source_rows) else np.ones(len(FEATURES))
    # floor the spread: a perfectly still baseline must not blow small differences up to huge z-scores
    sd = _floored(mu, sd)
    return Dataset(x, np.array([classes.index(label) for label in labels], dtype=int), np.array(sessions), classes,
                   mu, sd, source, np.array(weight))


def _balanced_omega(y: np.ndarray, n_classes: int, sample_weight: np.ndarray | None) -> np.ndarray:
    """Per-row weights summing to 1 with every present class weighing the same."""
    sample_weight = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, float)
    counts = np.bincount(y, weights=sample_weight, minlength=n_classes)
    weights = np.where(counts > 0, sample_weight.sum() / (n_classes * np.maximum(counts, 1e-9)), 0.0)[y]
    weights = weights * sample_weight
    return weights / weights.sum()


def _data_hessian(x: np.ndarray, theta: np.ndarray, omega: np.ndarray) -> np.ndarray:
    """Hessian of the weighted softmax loss: sum_i w_i x_i x_i^T (diag(p_i) - p_i p_i^T), as (feature, class)^2.

    Built one (class, class) block at a time, x^T diag(w p_c (delta_ck - p_k)) x, so memory stays at one
    copy of x: per-row (feature, feature) and (class, class) products cost ~1.8 KB a labelled second, too
    much for weeks of labels on a Pi.
    """
    n_features, n_classes = x.shape[1], theta.shape[1]
    p = softmax(x @ theta)
    hessian = np.empty((n_features, n_classes, n_features, n_classes))
    for c in range(n_classes):
        for k in range(c, n_classes):
            block = x.T @ (x * (omega * p[:, c] * (float(c == k) - p[:, k]))[:, None])
            hessian[:, c, :, k] = block
            hessian[:, k, :, c] = block  # the (k, c) block has the same row weights
    size = n_features * n_classes
    return hessian.reshape(size, size)


def _with_bias(z: np.ndarray) -> np.ndarray:
    return np.hstack([z, np.ones((len(z), 1))])  # the bias as a last, unpenalised feature


def _ridge(d: int, n_classes: int, l2: float) -> np.ndarray:
    """The L2 penalty per parameter (a tiny ridge on the biases: softmax is unchanged by adding one constant)."""
    penalty = np.full((d + 1, n_classes), l2)
    penalty[d] = 1e-8
    return penalty


def fit_logistic(z: np.ndarray, y: np.ndarray, n_classes: int, sample_weight: np.ndarray | None = None,
                 l2: float = L2, max_iter: int = 50, tol: float = 1e-10,
                 prior: PopulationPrior | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Class-weighted softmax regression, solved by Newton's method, with an L2 penalty or a population prior.

    The loss is convex and its Hessian small ((features + 1) x classes squared), so Newton's steps with a
    backtracking line search reach the optimum in a few iterations whatever the features' scale. A fixed
    gradient step (0.5, as before) depended on that scale and stopped where the iterations ran out, so
    results swung with rounding between machines (arm64 against x86 on identical records).
    With `prior`, the penalty is 0.5 (theta - prior) P (theta - prior) instead of 0.5 l2 |theta|^2: the
    weights are pulled towards what other people's bodies showed, not towards zero, the less the more rows
    (weighted by `sample_weight`) the wearer has (`PopulationPrior`).
    """
    omega = _balanced_omega(y, n_classes, sample_weight)
    n, d = z.shape
    x = _with_bias(z)
    onehot = np.eye(n_classes)[y]
    if prior is not None:
        centre = prior.theta
        precision = prior.precision(float(np.sum(sample_weight)) if sample_weight is not None else n)
        if centre.shape != (d + 1, n_classes):
            raise ValueError(f"the population prior is for {centre.shape[0] - 1} features and {centre.shape[1]} "
                             f"classes, the data has {d} and {n_classes}")
    else:
        centre, precision = np.zeros((d + 1, n_classes)), np.diag(_ridge(d, n_classes, l2).ravel())
    theta = centre.copy()

    def loss(th: np.ndarray) -> float:
        logits = x @ th
        logits -= logits.max(axis=1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        delta = (th - centre).ravel()
        return float(-(omega * (onehot * log_p).sum(axis=1)).sum() + 0.5 * delta @ precision @ delta)

    current = loss(theta)
    for _ in range(max_iter):
        p = softmax(x @ theta)
        grad = x.T @ ((p - onehot) * omega[:, None]) + (precision @ (theta - centre).ravel()).reshape(d + 1, -1)
        hessian = _data_hessian(x, theta, omega) + precision
        try:
            step = np.linalg.solve(hessian, grad.ravel()).reshape(d + 1, n_classes)
        except np.linalg.LinAlgError:  # singular to rounding (the softmax's free constant): least squares
            step = np.linalg.lstsq(hessian, grad.ravel(), rcond=None)[0].reshape(d + 1, n_classes)
        rate, decrease = 1.0, float((grad * step).sum())
        while rate > 1e-6:
            candidate = loss(theta - rate * step)
            if candidate <= current - 1e-4 * rate * decrease:
                break
            rate *= 0.5
        else:
            break  # no step lowers the loss: at the optimum to rounding
        theta, previous, current = theta - rate * step, current, candidate
        if previous - current <= tol * max(1.0, abs(current)):
            break
    return theta[:d].copy(), theta[d].copy()


PRIOR_L2 = 1.0  # the penalty of the population fit itself
PRIOR_WORTH_S = 300_000.0  # the population counts as much as this many seconds (83 h) of the wearer's own


@dataclass
class PopulationPrior:
    """What other people's bodies showed, as a Gaussian prior on one wearer's weights (a Laplace approximation).

    One wearer's few sessions drift (electrode, room, time of day) by as much as their state moves their
    physiology, so a model fitted on them alone learns the drift (Stress-Predict: 0.51 macro-F1 on new
    segments). Fitting each wearer with other people's data (each z-scored against their own statistics)
    added is what carries the signal; this is the quadratic approximation of that pooled loss around the
    population fit: centre `theta`, precision (Hessian of the population's mean loss + l2), counted as
    `worth_s` seconds of the wearer's own labelled recordings. A wearer with an hour of labels leans on the
    population about 80 to 1; one with weeks of them on their own data. It ships as a small JSON file.
    """

    classes: list[str]
    features: list[str]
    theta: np.ndarray  # (features + 1, classes), the bias in the last row
    hessian: np.ndarray  # ((features + 1) * classes)^2, of the population's mean (per-person-weighted) loss
    l2: float
    worth_s: float
    subjects: list[str]
    source: str

    def precision(self, own_seconds: float) -> np.ndarray:
        """The prior's precision against a wearer's mean loss over `own_seconds` of labelled rows."""
        d = self.theta.shape[0] - 1
        curvature = self.hessian + np.diag(_ridge(d, self.theta.shape[1], self.l2).ravel())
        return (self.worth_s / max(float(own_seconds), 1.0)) * curvature

    def applies_to(self, classes: Sequence[str]) -> bool:
        return list(classes) == list(self.classes) and list(self.features) == list(FEATURES)

    def to_json(self) -> dict:
        return {"kind": "physiology-population-prior-v1", "classes": self.classes, "features": self.features,
                "theta": self.theta.tolist(), "hessian": self.hessian.tolist(), "l2": self.l2,
                "worth_s": self.worth_s, "subjects": self.subjects, "source": self.source}

    @classmethod
    def from_json(cls, data: dict) -> PopulationPrior:
        try:
            prior = cls(list(data["classes"]), list(data["features"]), np.array(data["theta"], float),
                        np.array(data["hessian"], float), float(data["l2"]), float(data["worth_s"]),
                        list(data["subjects"]), str(data["source"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a physiology population prior: {exc!r}") from exc
        size = prior.theta.size
        if prior.theta.shape != (len(prior.features) + 1, len(prior.classes)) or prior.hessian.shape != (size, size):
            raise ValueError(f"population prior shapes disagree: theta {prior.theta.shape}, hessian "
                             f"{prior.hessian.shape} for {len(prior.features)} features, {len(prior.classes)} classes")
        return prior


def own_normalisation(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """The z-score statistics a wearer's model uses on all their data: baseline sessions, else all rows."""
    if ds.baseline_source.startswith("all sessions") and len(ds.x):
        return _spread(ds.x)
    return ds.baseline_mu, ds.baseline_sd


def fit_population_prior(people: dict[str, Dataset], l2: float = PRIOR_L2, worth_s: float = PRIOR_WORTH_S,
                         source: str = "") -> PopulationPrior:
    """The prior from several people: each z-scored against their own statistics, each weighing the same."""
    classes = sorted({c for ds in people.values() for c in ds.classes})
    zs, ys, ws = [], [], []
    for ds in people.values():
        if not len(ds.y):
            continue
        zs.append(zscore(ds.x, *own_normalisation(ds)))
        ys.append(np.array([classes.index(ds.classes[k]) for k in ds.y]))
        ws.append(np.full(len(ds.y), 1.0 / len(ds.y)))
    if not zs:
        raise ValueError("no labelled rows to fit a population prior on")
    z, y, w = np.vstack(zs), np.concatenate(ys), np.concatenate(ws)
    weights, bias = fit_logistic(z, y, len(classes), w, l2=l2)
    theta = np.vstack([weights, bias])
    hessian = _data_hessian(_with_bias(z), theta, _balanced_omega(y, len(classes), w))
    return PopulationPrior(classes, list(FEATURES), theta, hessian, l2, worth_s, sorted(people), source)


def load_prior(path: str | Path | None = None) -> PopulationPrior | None:
    """The population prior at `path` (default: the shipped one); None if the shipped file is absent."""
    if path is None:
        try:
            path = shipped(PHYSIO_PRIOR)
        except FileNotFoundError:
            return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the population prior: {exc}") from exc
    try:
        return PopulationPrior.from_json(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def shipped_prior() -> PopulationPrior | None:
    """The shipped population prior for the device's own fits; None, with a warning, if it cannot be read.

    A corrupt file on a device must not stop `fit` or a feedback refit: the wearer is fitted on their own
    data, as before the prior shipped. A prior a user names (`load_prior(path)`) stays strict.
    """
    try:
        return load_prior()
    except ValueError as exc:
        warnings.warn(f"{exc}; fitting without the population prior", NoPriorWarning, stacklevel=2)
        return None


def choose_l2(z: np.ndarray, y: np.ndarray, session: np.ndarray, n_classes: int,
              sample_weight: np.ndarray | None = None, grid: Sequence[float] = L2_GRID) -> float:
    """The L2 penalty with the best leave-one-session-out macro-F1 on these rows (ties: the stronger).

    Real wearers differ in how much their sessions drift: with few sessions a strong penalty keeps the model
    from fitting one session's offset (Stress-Predict), with many clean ones a weak one separates more.
    """
    sessions = np.unique(session)
    if len(sessions) < 3:
        return L2
    sample_weight = np.ones(len(y)) if sample_weight is None else sample_weight
    best, best_f1 = L2, -1.0
    for l2 in sorted(grid, reverse=True):
        predicted = np.empty_like(y)
        for sid in sessions:
            test = session == sid
            if len(np.unique(y[~test])) < 2:
                predicted[test] = np.bincount(y[~test], minlength=n_classes).argmax()
                continue
            w, b = fit_logistic(z[~test], y[~test], n_classes, sample_weight[~test], l2=l2)
            predicted[test] = (z[test] @ w + b).argmax(axis=1)
        f1 = report(y, predicted, [str(k) for k in range(n_classes)])["macro_f1"]
        if f1 > best_f1 + 1e-9:
            best, best_f1 = l2, f1
    return best


def zscore(x: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """Standardise against the wearer's baseline, bounded: one wild second must not dominate the model."""
    return np.clip((np.asarray(x, float) - mu) / sd, -Z_CLIP, Z_CLIP)


# The smallest spread a feature's z-score divides by, in its own units, besides 5 % of its mean: a still
# baseline must not blow a trivial difference up to a huge z-score. 0.5 BPM for the 30-s BPM spread, 0.02
# (2 %) for ln-SCL levels and differences, 1 BPM for BPM differences, 1e-3 for the rest.
MIN_SD = np.array([1e-3, 0.5] + [1e-3] * 5 + [0.02] + [1.0] * len(RELATIVE_S) + [0.02] * len(RELATIVE_S))


def _floored(mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return np.maximum(sd, np.maximum(0.05 * np.abs(mu), MIN_SD))


def _spread(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu = rows.mean(axis=0)
    sd = _floored(mu, rows.std(axis=0))
    return mu, sd


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _usable(prior: PopulationPrior | None, ds: Dataset) -> PopulationPrior | None:
    return prior if prior is not None and prior.applies_to(ds.classes) else None


def _fit(z: np.ndarray, ds: Dataset, rows: np.ndarray, prior: PopulationPrior | None
         ) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Weights, bias and the chosen L2 (None: the population prior was the penalty) on `rows` of `ds`."""
    if prior is not None:
        w, b = fit_logistic(z[rows], ds.y[rows], len(ds.classes), ds.weight[rows], prior=prior)
        return w, b, None
    l2 = choose_l2(z[rows], ds.y[rows], ds.session[rows], len(ds.classes), ds.weight[rows])
    w, b = fit_logistic(z[rows], ds.y[rows], len(ds.classes), ds.weight[rows], l2=l2)
    return w, b, l2


def leave_one_session_out(ds: Dataset, prior: PopulationPrior | None = None) -> dict:
    """Accuracy, macro-F1 and confusion over held-out sessions, with the majority-class baseline.

    `prior` is used when it is for this wearer's classes (`PopulationPrior.applies_to`); it must not have
    been fitted on this wearer.
    """
    prior = _usable(prior, ds)
    predicted = np.empty_like(ds.y)
    majority = np.empty_like(ds.y)
    for sid in np.unique(ds.session):
        test = ds.session == sid
        train = ~test
        # without baseline sessions the normalisation comes from the data: from the training folds only,
        # so the held-out session contributes nothing, not even its unlabelled statistics
        if ds.baseline_source.startswith("all sessions") and train.any():
            mu, sd = _spread(ds.x[train])
        else:
            mu, sd = ds.baseline_mu, ds.baseline_sd
        z = zscore(ds.x, mu, sd)
        if len(np.unique(ds.y[train])) < 2:
            predicted[test] = majority[test] = np.bincount(ds.y[train], minlength=len(ds.classes)).argmax()
            continue
        w, b, _ = _fit(z, ds, train, prior)
        predicted[test] = (z[test] @ w + b).argmax(axis=1)
        majority[test] = np.bincount(ds.y[train], minlength=len(ds.classes)).argmax()
    ours = report(ds.y, predicted, ds.classes)
    # Two majority baselines; the gate uses the stronger. The fold majority is the textbook one, but with
    # balanced labels it is always wrong (holding a session out makes its label the minority), so we also
    # take "always the commonest label overall".
    fold = report(ds.y, majority, ds.classes)
    overall = report(ds.y, np.full_like(ds.y, np.bincount(ds.y).argmax()), ds.classes)
    base = max(fold, overall, key=lambda r: (r["accuracy"], r["macro_f1"]))
    return {"accuracy": ours["accuracy"], "macro_f1": ours["macro_f1"], "confusion": ours["confusion"],
            "per_class": ours["per_class"], "classes": ds.classes, "samples": int(len(ds.y)),
            "sessions": int(len(np.unique(ds.session))), "prior": prior.source if prior is not None else None,
            "majority_accuracy": base["accuracy"], "majority_macro_f1": base["macro_f1"]}


def random_split(ds: Dataset, test_fraction: float = 0.2, seed: int = 0, prior: PopulationPrior | None = None
                 ) -> dict:
    """Macro-F1 on a random split of seconds, the seed paper's protocol, for contrast only.

    Neighbouring seconds share most of their trailing window, so this grades the model on near-copies of
    its training rows; `leave_one_session_out` is the figure that says something about a new session.
    """
    rng = np.random.default_rng(seed)
    test = rng.random(len(ds.y)) < test_fraction
    mu, sd = _spread(ds.x[~test]) if ds.baseline_source.startswith("all sessions") else (ds.baseline_mu, ds.baseline_sd)
    z = zscore(ds.x, mu, sd)
    w, b, _ = _fit(z, ds, ~test, _usable(prior, ds))
    ours = report(ds.y[test], (z[test] @ w + b).argmax(axis=1), ds.classes)
    return {"accuracy": ours["accuracy"], "macro_f1": ours["macro_f1"], "samples": int(test.sum())}


class PersonalModel:
    """A fitted model: baseline normalisation + softmax regression; `predict_proba(features)`."""

    def __init__(self, data: dict):
        self.data = data
        self.classes = list(data["classes"])
        self.version = int(data["version"])
        self.mu = np.array(data["baseline"]["mu"])
        self.sd = np.array(data["baseline"]["sd"])
        self.w = np.array(data["weights"])
        self.b = np.array(data["bias"])

    @classmethod
    def train(cls, ds: Dataset, user: str, version: int, evaluation: dict,
              prior: PopulationPrior | None = None) -> PersonalModel:
        z = zscore(ds.x, ds.baseline_mu, ds.baseline_sd)
        prior = _usable(prior, ds)
        w, b, l2 = _fit(z, ds, np.ones(len(ds.y), dtype=bool), prior)
        return cls({
            "kind": "physiology-logistic-v3", "user": user, "version": version, "classes": ds.classes,
            "features": list(FEATURES), "window_s": WINDOW_S, "history_s": HISTORY_S,
            "baseline": {"mu": ds.baseline_mu.tolist(), "sd": ds.baseline_sd.tolist(),
                         "source": ds.baseline_source},
            "weights": w.tolist(), "bias": b.tolist(), "l2": l2,
            "prior": None if prior is None else {"source": prior.source, "worth_s": prior.worth_s,
                                                 "subjects": len(prior.subjects)},
            "evaluation": evaluation,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        })

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        if len(features) != len(self.w):
            raise ValueError(f"model v{self.version} takes {len(self.w)} features ({self.data.get('kind')}), "
                             f"got {len(features)}: refit with emotion-edge fit")
        z = zscore(features, self.mu, self.sd)
        return softmax(z @ self.w + self.b)


class ModelRegistry:
    """Versioned per-user model files under DATA_DIR/models/USER/, with an installed-version pointer."""

    def __init__(self, data_dir: str | Path, user: str):
        self.dir = Path(data_dir) / "models" / user
        self.user = user
        self._cache: tuple[float, PersonalModel | None] | None = None

    def versions(self) -> list[int]:
        return sorted(int(p.stem.split("-v")[1]) for p in self.dir.glob("physio-v*.json"))

    def next_version(self) -> int:
        return (self.versions() or [0])[-1] + 1

    def save(self, model: PersonalModel, install: bool) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"physio-v{model.version}.json"
        _atomic_write(path, json.dumps(model.data, indent=1))
        if install:
            self.install(model.version)
        return path

    def install(self, version: int) -> None:
        if not (self.dir / f"physio-v{version}.json").exists():
            raise FileNotFoundError(f"no physiology model version {version} for user {self.user}")
        _atomic_write(self.dir / "current.json", json.dumps({"physio": version}))

    def current_version(self) -> int | None:
        pointer = self.dir / "current.json"
        if not pointer.exists():
            return None
        return int(json.loads(pointer.read_text())["physio"])

    def load(self, version: int) -> PersonalModel:
        return PersonalModel(json.loads((self.dir / f"physio-v{version}.json").read_text()))

    def current(self) -> PersonalModel | None:
        """The installed model, re-read only when the pointer file changed (cheap hot reload)."""
        pointer = self.dir / "current.json"
        try:
            mtime = pointer.stat().st_mtime_ns
        except FileNotFoundError:
            self._cache = None
            return None
        if self._cache is None or self._cache[0] != mtime:
            version = self.current_version()
            if version is None:  # the pointer vanished between the stat and the read
                self._cache = None
                return None
            self._cache = (mtime, self.load(version))
        return self._cache[1]


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def fit_user(records: list[dict], registry: ModelRegistry, extra=(), prior: PopulationPrior | None = None,
             use_shipped_prior: bool = True) -> tuple[dict, PersonalModel | None]:
    """Evaluate leave-one-session-out; train and install a new version if it beats the majority class.

    The population prior is `prior`, else the shipped one (`models/physio_prior.json`, fitted on the
    Stress-Predict recordings; none if it is unreadable: `shipped_prior`) unless `use_shipped_prior` is
    false; it applies only to its own classes.
    """
    if prior is None and use_shipped_prior:
        prior = shipped_prior()
    ds = build_dataset(records, extra)
    if len(ds.classes) < 2:
        return {"installed": False, "reason": f"need sessions of at least two labels, have {ds.classes}",
                "classes": ds.classes, "samples": int(len(ds.y))}, None
    evaluation = leave_one_session_out(ds, prior)
    better = (evaluation["accuracy"] > evaluation["majority_accuracy"]
              and evaluation["macro_f1"] > evaluation["majority_macro_f1"])
    evaluation["baseline_source"] = ds.baseline_source
    if not better:
        evaluation.update(installed=False, reason="no better than always answering the majority class")
        return evaluation, None
    model = PersonalModel.train(ds, registry.user, registry.next_version(), evaluation, prior)
    registry.save(model, install=True)
    evaluation.update(installed=True, version=model.version)
    return evaluation, model
