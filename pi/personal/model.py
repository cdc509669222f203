"""The personal physiology model: how this wearer's skin conductance and heart rate look in each state.

Physiology differs too much between people for one population model, so each user gets their own:
- features over trailing 30, 60 and 120 s of per-second records: mean BPM at each scale, its 30-s spread,
  and the slope of log conductance at each scale (chosen on real E4 recordings, see `window_features`);
- normalised against the user's own baseline: the `baseline`-labelled sessions when there are any,
  otherwise the user's statistics over all sessions;
- a class-weighted multinomial logistic regression with bounded z-scores and a strong L2 penalty (numpy
  only, it trains in well under a second on a Pi);
- evaluated leave-one-session-out, because neighbouring seconds are nearly identical and a random split
  would grade the model on copies of its training data.
Models are small JSON files, versioned per user; `current.json` names the installed version.
"""
from __future__ import annotations

import datetime
import json
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pi.metrics import report

FEATURES = ("bpm_mean", "bpm_std", "bpm_mean_60", "bpm_mean_120", "scl_log_slope", "scl_log_slope_60",
            "scl_log_slope_120")
WINDOW_S = 30  # the short scale; `bpm_mean`, `bpm_std` and `scl_log_slope` are over the last WINDOW_S s
HISTORY_S = 120  # the longest scale: a window's features need up to this many trailing seconds
SCALES = (WINDOW_S, 60, HISTORY_S)
MIN_VALID = 5
MIN_HR_QUALITY = 0.5  # a second whose beat intervals were mostly rejected has no trustworthy BPM
L2_GRID = (0.01, 0.1, 1.0)  # the penalty is chosen per wearer by an inner leave-one-session-out
L2 = 0.1  # used where there are too few sessions to choose
Z_CLIP = 10.0
BASELINE_LABEL = "baseline"


def _slope(at: np.ndarray, v: np.ndarray) -> float:
    t = at - at.mean()
    return float((t * (v - v.mean())).sum() / max(float((t * t).sum()), 1e-9))


def window_features(scl: Sequence[float | None], bpm: Sequence[float | None]) -> np.ndarray | None:
    """Features of the trailing window of per-second values (None where a second had none); None if sparse.

    Measured on real E4 recordings (Stress-Predict, README): absolute conductance drifts through a session
    by more than stress moves it, so conductance enters only as the slope of its logarithm (relative rise,
    independent of the wearer's µS level) over 30, 60 and 120 s; heart rate as its mean over the same
    scales and its 30-s spread. Windows shorter than a scale (the start of a session) use what there is.
    """
    scl, bpm = list(scl)[-HISTORY_S:], list(bpm)[-HISTORY_S:]
    out = []
    for n in SCALES:
        h = np.array([v for v in bpm[-n:] if v is not None], dtype=float)
        if len(h) < MIN_VALID:
            return None
        out.append(h.mean())
        if n == WINDOW_S:
            out.append(h.std())
    for n in SCALES:
        win = scl[-n:]
        at = np.array([i for i, v in enumerate(win) if v is not None and v > 0], dtype=float)
        if len(at) < MIN_VALID:
            return None
        g = np.log(np.array([win[int(i)] for i in at], dtype=float))
        out.append(_slope(at, g))
    return np.array(out)


def _bpm_of(record: dict) -> float | None:
    return record["bpm"] if record.get("hr_quality", 1.0) >= MIN_HR_QUALITY else None


def session_samples(records: list[dict]) -> list[np.ndarray]:
    """Trailing-window features for every second of one session (records sorted by seq)."""
    out = []
    for i in range(MIN_VALID - 1, len(records)):
        win = records[max(0, i - HISTORY_S + 1):i + 1]
        f = window_features([r["skin_conductance"] for r in win], [_bpm_of(r) for r in win])
        if f is not None:
            out.append(f)
    return out


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
    """Group a user's records by session, compute features, and the user's baseline statistics.

    `extra` holds (raw features, label) examples from carer feedback; each is its own 'session' and
    weighs as much as an average recorded session, since a correction is fresh evidence about the wearer
    as they are now, while a session contributes one row per second.
    """
    by_session: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_session[r["session_id"]].append(r)
    rows, labels, sessions, baseline_rows = [], [], [], []
    for sid, recs in by_session.items():
        recs.sort(key=lambda r: r["seq"])
        label = recs[0]["mood"]
        samples = session_samples(recs)
        if label == BASELINE_LABEL:
            baseline_rows += samples
            continue
        rows += samples
        labels += [label] * len(samples)
        sessions += [sid] * len(samples)
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
    sd = np.maximum(sd, np.maximum(0.05 * np.abs(mu), 1e-3))
    return Dataset(x, np.array([classes.index(label) for label in labels], dtype=int), np.array(sessions), classes,
                   mu, sd, source, np.array(weight))


def fit_logistic(z: np.ndarray, y: np.ndarray, n_classes: int, sample_weight: np.ndarray | None = None,
                 l2: float = L2, max_iter: int = 50, tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """Class-weighted softmax regression with an L2 penalty on the weights, solved by Newton's method.

    The loss is convex and its Hessian small ((features + 1) x classes squared), so Newton's steps with a
    backtracking line search reach the optimum in a few iterations whatever the features' scale. A fixed
    gradient step (0.5, as before) depended on that scale and stopped where the iterations ran out, so
    results swung with rounding between machines (arm64 against x86 on identical records).
    """
    sample_weight = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, float)
    counts = np.bincount(y, weights=sample_weight, minlength=n_classes)
    weights = np.where(counts > 0, sample_weight.sum() / (n_classes * np.maximum(counts, 1e-9)), 0.0)[y]
    weights = weights * sample_weight
    omega = weights / weights.sum()
    n, d = z.shape
    x = np.hstack([z, np.ones((n, 1))])  # the bias as a last, unpenalised feature
    onehot = np.eye(n_classes)[y]
    # the penalty (and a tiny ridge on the biases: softmax is unchanged by adding one constant to all of them)
    penalty = np.full((d + 1, n_classes), l2)
    penalty[d] = 1e-8
    theta = np.zeros((d + 1, n_classes))

    def loss(th: np.ndarray) -> float:
        logits = x @ th
        logits -= logits.max(axis=1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return float(-(omega * (onehot * log_p).sum(axis=1)).sum() + 0.5 * (penalty * th * th).sum())

    current = loss(theta)
    for _ in range(max_iter):
        p = softmax(x @ theta)
        grad = x.T @ ((p - onehot) * omega[:, None]) + penalty * theta
        # Hessian blocks: sum_i w_i x_i x_i^T (diag(p_i) - p_i p_i^T), laid out as (feature, class)^2
        curvature = omega[:, None, None] * (p[:, :, None] * np.eye(n_classes) - p[:, :, None] * p[:, None, :])
        outer = x[:, :, None] * x[:, None, :]
        hessian = np.tensordot(outer, curvature, axes=([0], [0])).transpose(0, 2, 1, 3)
        size = (d + 1) * n_classes
        hessian = hessian.reshape(size, size) + np.diag(penalty.ravel())
        step = np.linalg.solve(hessian, grad.ravel()).reshape(d + 1, n_classes)
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


def _spread(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu = rows.mean(axis=0)
    sd = np.maximum(rows.std(axis=0), np.maximum(0.05 * np.abs(mu), 1e-3))
    return mu, sd


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def leave_one_session_out(ds: Dataset) -> dict:
    """Accuracy, macro-F1 and confusion over held-out sessions, with the majority-class baseline."""
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
        l2 = choose_l2(z[train], ds.y[train], ds.session[train], len(ds.classes), ds.weight[train])
        w, b = fit_logistic(z[train], ds.y[train], len(ds.classes), ds.weight[train], l2=l2)
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
            "sessions": int(len(np.unique(ds.session))),
            "majority_accuracy": base["accuracy"], "majority_macro_f1": base["macro_f1"]}


def random_split(ds: Dataset, test_fraction: float = 0.2, seed: int = 0) -> dict:
    """Macro-F1 on a random split of seconds, the seed paper's protocol, for contrast only.

    Neighbouring seconds share most of their trailing window, so this grades the model on near-copies of
    its training rows; `leave_one_session_out` is the figure that says something about a new session.
    """
    rng = np.random.default_rng(seed)
    test = rng.random(len(ds.y)) < test_fraction
    mu, sd = _spread(ds.x[~test]) if ds.baseline_source.startswith("all sessions") else (ds.baseline_mu, ds.baseline_sd)
    z = zscore(ds.x, mu, sd)
    l2 = choose_l2(z[~test], ds.y[~test], ds.session[~test], len(ds.classes), ds.weight[~test])
    w, b = fit_logistic(z[~test], ds.y[~test], len(ds.classes), ds.weight[~test], l2=l2)
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
    def train(cls, ds: Dataset, user: str, version: int, evaluation: dict) -> PersonalModel:
        z = zscore(ds.x, ds.baseline_mu, ds.baseline_sd)
        l2 = choose_l2(z, ds.y, ds.session, len(ds.classes), ds.weight)
        w, b = fit_logistic(z, ds.y, len(ds.classes), ds.weight, l2=l2)
        return cls({
            "kind": "physiology-logistic-v2", "user": user, "version": version, "classes": ds.classes,
            "features": list(FEATURES), "window_s": WINDOW_S, "history_s": HISTORY_S,
            "baseline": {"mu": ds.baseline_mu.tolist(), "sd": ds.baseline_sd.tolist(),
                         "source": ds.baseline_source},
            "weights": w.tolist(), "bias": b.tolist(), "l2": l2, "evaluation": evaluation,
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


def fit_user(records: list[dict], registry: ModelRegistry, extra=()) -> tuple[dict, PersonalModel | None]:
    """Evaluate leave-one-session-out; train and install a new version if it beats the majority class."""
    ds = build_dataset(records, extra)
    if len(ds.classes) < 2:
        return {"installed": False, "reason": f"need sessions of at least two labels, have {ds.classes}",
                "classes": ds.classes, "samples": int(len(ds.y))}, None
    evaluation = leave_one_session_out(ds)
    better = (evaluation["accuracy"] > evaluation["majority_accuracy"]
              and evaluation["macro_f1"] > evaluation["majority_macro_f1"])
    evaluation["baseline_source"] = ds.baseline_source
    if not better:
        evaluation.update(installed=False, reason="no better than always answering the majority class")
        return evaluation, None
    model = PersonalModel.train(ds, registry.user, registry.next_version(), evaluation)
    registry.save(model, install=True)
    evaluation.update(installed=True, version=model.version)
    return evaluation, model
