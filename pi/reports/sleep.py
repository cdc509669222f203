"""Sleep and the next morning's emotion: pairing, statistics, plots and an HTML report.

**Pairing.** A person's night is the sum of the main sleeps (`mainSleep: true`) whose `dateOfSleep` is that
date (a night the tracker split in two counts once, whole); its wake time is the latest of their end
times. Naps are left out and counted. Each night gets a morning score from one of two sources:

- `device`: the device's own detection results for that user (the store's `detections` table) whose time
  stamp falls in the morning window `[wake, wake + sleep.morning_hours)`. Each result's **valence** is
  Σ_e w_e · p_e over the fused distribution `p_<emotion>` of the result, with w = +1 for happy, -1 for sad,
  angry, fear and disgust, and 0 for neutral, surprise and any other label; it lies in [-1, 1]: the
  probability of a positive emotion minus that of the negative ones. The morning score is the mean valence
  of the morning's results. A result without a distribution (`emotion: unknown`: no source could name an
  emotion) carries no valence and is not counted. Nights without a wake time (CSV without `end_time`) have
  no morning window.
- `self`: the mean self-reported mood (1-5) of the reports whose date, in the night's time zone, is the
  night's date (PMSys' questionnaire is a morning one); unanswered reports are not counted.

Every pair keeps how many results or reports made its score; a night with none is missing, never zero.

**Statistics** (scipy; statsmodels for the mixed model), over nights as (hours asleep, score):
Pearson r with its p-value and Fisher-z 95 % CI; the least-squares slope (score per hour of sleep) with a
t-based 95 % CI; Spearman's rho as a rank check; with several people, the **within-person** correlation
(repeated-measures correlation, Bakdash & Marusich 2017: Pearson r of each person's deviations from their
own means, with N − k − 1 degrees of freedom, equal to the person-fixed-effects regression's test) and a
linear mixed model `score ~ hours + (1 | person)` (REML); short (< 6 h) against long (> 7 h) nights with
Welch's t CI of the difference. The pooled p-value treats every night as independent, which nights of one
person are not: with several people read the within-person and mixed-model figures.
"""
from __future__ import annotations

import base64
import html
import io
import math
import sqlite3
import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing import TypeAlias  # 3.10+; only read by type checkers here
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from pi.errors import MissingExtraError
from pi.ingest.tables import has_table, iso_utc, zone_named

VALENCE = {"happy": 1.0, "surprise": 0.0, "neutral": 0.0, "sad": -1.0, "angry": -1.0, "fear": -1.0,
           "disgust": -1.0}
SHORT_BELOW_H, LONG_ABOVE_H = 6.0, 7.0
MIN_PAIRS = 3
SCORE_DEFINITIONS = {
    "device": "morning valence: the mean over the morning's detection results of P(happy) − P(sad) − "
              "P(angry) [− P(fear) − P(disgust)] from the fused distribution, in [-1, 1]",
    "self": "the self-reported mood of that day (PMSys 1-5, higher is better)",
}
SEED_CLAIM = "under ~6 h of sleep goes with sad or neutral mornings (the cloud FER + sleep study this " \
             "product is built from)"
EXTRA_HINT = "pip install 'emotion-edge[report]'"

FloatArray: TypeAlias = Any  # a sequence or numpy array of floats (numpy is imported lazily, so not named here)


def _need(module: str):
    """Import a `report` extra package on demand, so the daemon on a Pi without it still starts."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(f"the sleep report needs {module.split('.')[0]}, which is not installed: "
                                f"{EXTRA_HINT}") from exc


@dataclass(frozen=True)
class Pair:
    user: str
    date: date
    hours: float
    score: float
    count: int  # results (device) or reports (self) behind the score
    wake_utc: str | None


def valence(result: dict) -> float | None:
    """One result's valence (see the module docstring); None when it has no fused distribution."""
    probs = {k[2:]: v for k, v in result.items() if k.startswith("p_") and v is not None}
    if not probs:
        return None
    return float(sum(VALENCE.get(e, 0.0) * p for e, p in probs.items()))


def known_users(db: sqlite3.Connection) -> list[str]:
    return [r[0] for r in db.execute("SELECT DISTINCT user FROM sleep_nights ORDER BY user")]


def nights(db: sqlite3.Connection, user: str, date_from: date | None, date_to: date | None) -> tuple[list, int]:
    """The user's nights as (date, minutes asleep, wake time UTC or None, zone name), and the naps left out."""
    rows = db.execute("SELECT date_of_sleep, minutes_asleep, end_utc, timezone, main_sleep FROM sleep_nights "
                      "WHERE user = ? AND date_of_sleep >= ? AND date_of_sleep <= ? ORDER BY date_of_sleep",
                      (user, (date_from or date.min).isoformat(), (date_to or date.max).isoformat())).fetchall()
    by_date: dict[str, list] = {}
    naps = 0
    for day, minutes, end_utc, zone, main in rows:
        if not main:
            naps += 1
            continue
        entry = by_date.setdefault(day, [0, None, zone])
        entry[0] += minutes
        if end_utc is not None and (entry[1] is None or end_utc > entry[1]):
            entry[1] = end_utc
    return [(date.fromisoformat(d), m, e, z) for d, (m, e, z) in by_date.items()], naps


def _device_scores(db, user, night_list, morning_hours) -> dict[date, tuple[float, int]]:
    import json

    if not has_table(db, "detections"):
        return {}
    out = {}
    for day, _, wake, _ in night_list:
        if wake is None:
            continue
        start = datetime.fromisoformat(wake.replace("Z", "+00:00"))
        rows = db.execute("SELECT result FROM detections WHERE user = ? AND timestamp >= ? AND timestamp < ?",
                          (user, wake, iso_utc(start + timedelta(hours=morning_hours)))).fetchall()
        values = [v for v in (valence(json.loads(r[0])) for r in rows) if v is not None]
        if values:
            out[day] = (sum(values) / len(values), len(values))
    return out


def _self_scores(db, user, night_list) -> dict[date, tuple[float, int]]:
    reports = db.execute("SELECT timestamp, mood FROM mood_reports WHERE user = ? AND mood IS NOT NULL",
                         (user,)).fetchall()
    zones = {z for _, _, _, z in night_list}
    by_zone_date: dict[tuple[str, date], list[float]] = defaultdict(list)
    for zone_name in zones:
        zone = zone_named(zone_name)
        for stamp, mood in reports:
            local = datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone(zone).date()
            by_zone_date[(zone_name, local)].append(mood)
    out = {}
    for day, _, _, zone_name in night_list:
        values = by_zone_date.get((zone_name, day))
        if values:
            out[day] = (sum(values) / len(values), len(values))
    return out


def pair_nights(db: sqlite3.Connection, users: Sequence[str], mood: str = "device",
                date_from: date | None = None, date_to: date | None = None,
                morning_hours: float = 3.0) -> tuple[list[Pair], dict]:
    """Each night with its morning score, and the counts of what was left out (per the module docstring)."""
    if mood not in SCORE_DEFINITIONS:
        raise ValueError(f"mood source must be device or self, got {mood!r}")
    pairs: list[Pair] = []
    counts = {"nights": 0, "naps_left_out": 0, "nights_without_score": 0, "nights_without_wake_time": 0}
    for user in users:
        night_list, naps = nights(db, user, date_from, date_to)
        counts["nights"] += len(night_list)
        counts["naps_left_out"] += naps
        scores = (_device_scores(db, user, night_list, morning_hours) if mood == "device"
                  else _self_scores(db, user, night_list))
        for day, minutes, wake, _ in night_list:
            if mood == "device" and wake is None:
                counts["nights_without_wake_time"] += 1
            if day not in scores:
                counts["nights_without_score"] += 1
                continue
            score, n = scores[day]
            pairs.append(Pair(user, day, minutes / 60.0, score, n, wake))
    pairs.sort(key=lambda p: (p.user, p.date))
    return pairs, counts


def _f(value) -> float | None:
    """A finite float, else None (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _ci(low, high) -> list | None:
    low, high = _f(low), _f(high)
    return None if low is None or high is None else [low, high]


def fit_band(x: FloatArray, y: FloatArray, grid: FloatArray, level: float = 0.95):
    """The least-squares line on `grid` and the confidence band of the mean score there:
    fit ± t · s · sqrt(1/n + (x0 − x̄)² / Sxx), from scipy's linregress and t quantile."""
    np = _need("numpy")
    stats = _need("scipy.stats")
    x, y, grid = np.asarray(x, float), np.asarray(y, float), np.asarray(grid, float)
    lr = stats.linregress(x, y)
    n = len(x)
    fit = lr.intercept + lr.slope * grid
    resid = y - (lr.intercept + lr.slope * x)
    s = math.sqrt(float(resid @ resid) / (n - 2))
    half = stats.t.ppf(0.5 + level / 2, n - 2) * s * np.sqrt(1 / n + (grid - x.mean()) ** 2 /
                                                              float(((x - x.mean()) ** 2).sum()))
    return fit, fit - half, fit + half


def within_person(users: Sequence[str], x: FloatArray, y: FloatArray) -> dict:
    """Repeated-measures correlation: Pearson r of deviations from each person's own means, tested with
    N − k − 1 degrees of freedom; CI by Fisher's z with standard error 1/sqrt(df − 1)."""
    np = _need("numpy")
    stats = _need("scipy.stats")
    users, x, y = np.asarray(users), np.asarray(x, float), np.asarray(y, float)
    dx, dy = x.copy(), y.copy()
    for u in np.unique(users):
        m = users == u
        dx[m] -= x[m].mean()
        dy[m] -= y[m].mean()
    k = len(np.unique(users))
    df = len(x) - k - 1
    if df < 2 or not dx.any() or not dy.any():
        return {"r": None, "p": None, "ci": None, "df": df, "slope": None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = float(stats.pearsonr(dx, dy).statistic)
    r_safe = min(max(r, -0.9999999), 0.9999999)
    t = r_safe * math.sqrt(df / (1 - r_safe ** 2))
    p = float(2 * stats.t.sf(abs(t), df))
    z, se = math.atanh(r_safe), 1 / math.sqrt(df - 1)
    q = stats.norm.ppf(0.975)
    return {"r": r, "p": p, "ci": [math.tanh(z - q * se), math.tanh(z + q * se)], "df": df,
            "slope": float(stats.linregress(dx, dy).slope)}


def mixed_model(users: Sequence[str], x: Sequence[float], y: Sequence[float]) -> dict | None:
    """`score ~ hours + (1 | person)` by REML (statsmodels MixedLM); None when statsmodels is missing."""
    try:
        import statsmodels.api as sm
        from statsmodels.tools.sm_exceptions import ConvergenceWarning
    except ImportError:
        return None
    np = _need("numpy")
    exog = sm.add_constant(np.asarray(x, float))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = sm.MixedLM(np.asarray(y, float), exog, groups=np.asarray(users)).fit(reml=True)
    ci = np.asarray(fit.conf_int())
    return {"slope_per_hour": _f(fit.fe_params[1]), "slope_ci": _ci(ci[1][0], ci[1][1]),
            "slope_p": _f(fit.pvalues[1]), "intercept": _f(fit.fe_params[0]),
            "person_intercept_variance": _f(np.asarray(fit.cov_re).ravel()[0]), "residual_variance": _f(fit.scale),
            "converged": bool(fit.converged) and not any(issubclass(w.category, ConvergenceWarning) for w in caught),
            "method": "statsmodels MixedLM, random intercept per person, REML"}


def statistics(pairs: Sequence[Pair]) -> dict:
    """Every figure of the report from the pairs (see the module docstring). Figures that cannot be
    computed (too few nights, no variation) are None, with the reason in `notes`."""
    np = _need("numpy")
    stats = _need("scipy.stats")
    users = sorted({p.user for p in pairs})
    x = np.array([p.hours for p in pairs], float)
    y = np.array([p.score for p in pairs], float)
    out: dict = {"n": len(pairs), "users": users, "n_users": len(users), "pearson_r": None, "pearson_p": None,
                 "pearson_ci": None, "spearman_r": None, "spearman_p": None, "slope_per_hour": None,
                 "slope_ci": None, "slope_p": None, "intercept": None, "within_person_r": None,
                 "within_person_p": None, "within_person_ci": None, "within_person_df": None,
                 "within_person_slope": None, "mixed_model": None, "notes": []}
    short, long_ = y[x < SHORT_BELOW_H], y[x > LONG_ABOVE_H]
    out.update({"short_n": int(len(short)), "short_mean": _f(short.mean()) if len(short) else None,
                "long_n": int(len(long_)), "long_mean": _f(long_.mean()) if len(long_) else None,
                "long_minus_short": None, "long_minus_short_ci": None, "long_minus_short_p": None,
                "mean_hours": _f(x.mean()) if len(x) else None, "mean_score": _f(y.mean()) if len(y) else None})
    if len(pairs) < MIN_PAIRS:
        out["notes"].append(f"{len(pairs)} paired night(s): at least {MIN_PAIRS} are needed for the statistics")
        return out
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        out["notes"].append("sleep or score does not vary: no correlation or slope")
    else:
        pr = stats.pearsonr(x, y)
        ci = pr.confidence_interval(0.95)
        sr = stats.spearmanr(x, y)
        lr = stats.linregress(x, y)
        t = stats.t.ppf(0.975, len(x) - 2)
        out.update({"pearson_r": _f(pr.statistic), "pearson_p": _f(pr.pvalue), "pearson_ci": _ci(ci.low, ci.high),
                    "spearman_r": _f(sr.statistic), "spearman_p": _f(sr.pvalue), "slope_per_hour": _f(lr.slope),
                    "slope_ci": _ci(lr.slope - t * lr.stderr, lr.slope + t * lr.stderr), "slope_p": _f(lr.pvalue),
                    "intercept": _f(lr.intercept)})
    if len(users) > 1:
        w = within_person([p.user for p in pairs], x, y)
        out.update({"within_person_r": _f(w["r"]), "within_person_p": _f(w["p"]),
                    "within_person_ci": _ci(*w["ci"]) if w["ci"] else None, "within_person_df": w["df"],
                    "within_person_slope": _f(w["slope"])})
        try:
            mixed = mixed_model([p.user for p in pairs], x, y)
            if mixed is None:
                out["notes"].append(f"no mixed model: statsmodels is not installed ({EXTRA_HINT})")
        except (ValueError, np.linalg.LinAlgError) as exc:  # e.g. a singular design: say so, keep the rest
            mixed = None
            out["notes"].append(f"the mixed model could not be fitted: {exc}")
        out["mixed_model"] = mixed
        out["notes"].append("the pooled p-value treats all nights as independent; nights of one person are not, "
                            "so read the within-person and mixed-model figures")
    if len(short) >= 2 and len(long_) >= 2:
        tt = stats.ttest_ind(long_, short, equal_var=False)
        ci = tt.confidence_interval(0.95)
        out.update({"long_minus_short": _f(long_.mean() - short.mean()), "long_minus_short_ci": _ci(ci.low, ci.high),
                    "long_minus_short_p": _f(tt.pvalue)})
    else:
        out["notes"].append(f"short/long comparison needs 2+ nights of each (short {len(short)}, long {len(long_)})")
    return out


def per_user(pairs: Sequence[Pair]) -> list[dict]:
    """Each person's own n, mean sleep, mean score and Pearson r (None under 3 nights or no variation)."""
    np = _need("numpy")
    stats = _need("scipy.stats")
    rows = []
    for user in sorted({p.user for p in pairs}):
        mine = [p for p in pairs if p.user == user]
        x = np.array([p.hours for p in mine])
        y = np.array([p.score for p in mine])
        r = None
        if len(mine) >= MIN_PAIRS and np.ptp(x) > 0 and np.ptp(y) > 0:
            r = _f(stats.pearsonr(x, y).statistic)
        rows.append({"user": user, "n": len(mine), "mean_hours": _f(x.mean()), "mean_score": _f(y.mean()),
                     "pearson_r": r})
    return rows


def build_report(db: sqlite3.Connection, users: Sequence[str], mood: str = "device",
                 date_from: date | None = None, date_to: date | None = None, morning_hours: float = 3.0) -> dict:
    """The report as one JSON-ready object: the statistics, the counts, the definitions, per person."""
    return analyse(db, users, mood, date_from, date_to, morning_hours)[0]


def analyse(db: sqlite3.Connection, users: Sequence[str], mood: str = "device", date_from: date | None = None,
            date_to: date | None = None, morning_hours: float = 3.0) -> tuple[dict, list[Pair]]:
    """The report (see `build_report`) and the pairs it was computed from."""
    pairs, counts = pair_nights(db, users, mood, date_from, date_to, morning_hours)
    report = statistics(pairs)
    report.update({"users_requested": list(users), "mood_source": mood, "score_definition": SCORE_DEFINITIONS[mood],
                   "from": date_from.isoformat() if date_from else None,
                   "to": date_to.isoformat() if date_to else None,
                   "morning_hours": morning_hours if mood == "device" else None,
                   "short_below_h": SHORT_BELOW_H, "long_above_h": LONG_ABOVE_H, "counts": counts,
                   "per_user": per_user(pairs), "seed_claim": SEED_CLAIM,
                   "first_night": min(p.date for p in pairs).isoformat() if pairs else None,
                   "last_night": max(p.date for p in pairs).isoformat() if pairs else None})
    report["mean_results_per_morning"] = _f(sum(p.count for p in pairs) / len(pairs)) if pairs else None
    return report, pairs


# -- plots -----------------------------------------------------------------------------------------------
def _figure(width: float, height: float):
    """A matplotlib Figure on the Agg canvas, without pyplot (no global backend, no display)."""
    _need("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def _colours(users: Sequence[str]) -> dict:
    from matplotlib import colormaps

    cmap = colormaps["tab20" if len(users) > 10 else "tab10"]
    return {u: cmap(i % cmap.N) for i, u in enumerate(users)}


def scatter_png(pairs: Sequence[Pair], report: dict) -> bytes:
    """Hours asleep against the morning score, one colour a person, with the pooled least-squares line and
    its 95 % confidence band. Self-reported moods are (mostly) whole numbers: they are jittered vertically by up to
    ±0.2 so that the points show (drawing only; every figure uses the true values)."""
    np = _need("numpy")
    fig = _figure(7.2, 4.6)
    ax = fig.add_subplot()
    users = report["users"]
    colours = _colours(users)
    rng = np.random.default_rng(0)
    integer = report["mood_source"] == "self"
    for u in users:
        mine = [p for p in pairs if p.user == u]
        y = np.array([p.score for p in mine])
        if integer:
            y = y + rng.uniform(-0.2, 0.2, len(y))
        ax.scatter([p.hours for p in mine], y, s=12, alpha=0.55, color=colours[u], label=u, linewidths=0)
    ax.axvline(SHORT_BELOW_H, color="0.4", lw=0.8, ls="--")
    ax.axvline(LONG_ABOVE_H, color="0.4", lw=0.8, ls=":")
    if report["slope_per_hour"] is not None:
        x = np.array([p.hours for p in pairs])
        grid = np.linspace(x.min(), x.max(), 100)
        fit, lo, hi = fit_band(x, [p.score for p in pairs], grid)
        ax.plot(grid, fit, color="k", lw=1.6, label="least squares (all nights)")
        ax.fill_between(grid, lo, hi, color="k", alpha=0.15, lw=0, label="95 % CI of the mean")
    xs = [p.hours for p in pairs]
    if xs:
        ax.set_xlim(min(xs) - 0.3, max(xs) + 0.3)
    ax.set_xlabel("hours asleep (the night before)")
    ax.set_ylabel("self-reported mood (1-5)" if report["mood_source"] == "self" else "morning valence (-1..1)")
    title = f"n = {report['n']} nights, {len(users)} person(s)"
    if report["pearson_r"] is not None:
        title += f"; pooled r = {report['pearson_r']:.2f}"
    if report["within_person_r"] is not None:
        title += f", within-person r = {report['within_person_r']:.2f}"
    ax.set_title(title, fontsize=10)
    if len(users) <= 20:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(alpha=0.25)
    return _png(fig)


def timeline_png(pairs: Sequence[Pair], report: dict) -> bytes:
    """Sleep and score night by night, one colour a person; lines join consecutive nights only (and are
    drawn only for up to three people: beyond that the points alone stay readable)."""
    fig = _figure(7.2, 4.8)
    top, bottom = fig.subplots(2, 1, sharex=True)
    colours = _colours(report["users"])
    lines = len(report["users"]) <= 3
    for u in report["users"]:
        mine = [p for p in pairs if p.user == u]
        days, hours, scores = [], [], []
        for i, p in enumerate(mine):
            if i and (p.date - mine[i - 1].date).days > 1:  # a gap: break the line
                days.append(p.date - timedelta(days=1))
                hours.append(math.nan)
                scores.append(math.nan)
            days.append(p.date)
            hours.append(p.hours)
            scores.append(p.score)
        style = {"marker": ".", "ms": 4, "lw": 0.8 if lines else 0, "color": colours[u]}
        top.plot(days, hours, label=u, **style)
        bottom.plot(days, scores, **style)
    top.axhline(SHORT_BELOW_H, color="0.4", lw=0.8, ls="--")
    top.axhline(LONG_ABOVE_H, color="0.4", lw=0.8, ls=":")
    top.set_ylabel("hours asleep")
    bottom.set_ylabel("mood (1-5)" if report["mood_source"] == "self" else "morning valence")
    top.grid(alpha=0.25)
    bottom.grid(alpha=0.25)
    if len(report["users"]) <= 20:
        top.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.autofmt_xdate()
    return _png(fig)


def plots(pairs: Sequence[Pair], report: dict) -> dict[str, bytes]:
    """The report's PNGs by file name (none without pairs)."""
    if not pairs:
        return {}
    return {"sleep_scatter.png": scatter_png(pairs, report), "sleep_timeline.png": timeline_png(pairs, report)}


# -- HTML --------------------------------------------------------------------------------------------------
def _num(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_num(v, digits) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:.2g}" if 0 < abs(value) < 0.01 else f"{value:.{digits}f}"
    return html.escape(str(value))


def render_html(report: dict, images: dict[str, bytes]) -> str:
    """One self-contained HTML page (the PNGs inline as data: URIs), for a carer or a clinician."""
    e = html.escape
    unit = "mood points" if report["mood_source"] == "self" else "valence"
    rows = [
        ("Nights paired", report["n"], f"{report['counts']['nights']} main nights in range, "
         f"{report['counts']['nights_without_score']} without a score (missing, not zero), "
         f"{report['counts']['naps_left_out']} naps left out"),
        ("Pearson r (pooled)", report["pearson_r"], f"p = {_num(report['pearson_p'])}, 95 % CI "
         f"{_num(report['pearson_ci'])}"),
        ("Slope", report["slope_per_hour"], f"{unit} per hour of sleep, 95 % CI {_num(report['slope_ci'])}"),
        ("Spearman rho", report["spearman_r"], f"p = {_num(report['spearman_p'])} (rank check)"),
        ("Within-person r", report["within_person_r"],
         "one person only" if report["n_users"] < 2 else
         f"p = {_num(report['within_person_p'])}, 95 % CI {_num(report['within_person_ci'])}, "
         f"df {report['within_person_df']}; each person's deviations from their own means"),
    ]
    mixed = report.get("mixed_model")
    if mixed:
        rows.append(("Mixed model slope", mixed["slope_per_hour"], f"{unit} per hour, 95 % CI "
                     f"{_num(mixed['slope_ci'])}, p = {_num(mixed['slope_p'])}; random intercept per person "
                     f"(variance {_num(mixed['person_intercept_variance'])}), REML"
                     + ("" if mixed["converged"] else "; did not converge cleanly")))
    rows += [
        (f"Short nights (< {SHORT_BELOW_H:g} h)", report["short_mean"], f"mean score, n = {report['short_n']}"),
        (f"Long nights (> {LONG_ABOVE_H:g} h)", report["long_mean"], f"mean score, n = {report['long_n']}"),
        ("Long − short", report["long_minus_short"], f"95 % CI {_num(report['long_minus_short_ci'])} (Welch), "
         f"p = {_num(report['long_minus_short_p'])}"),
    ]
    table = "\n".join(f"<tr><th>{e(name)}</th><td>{_num(value)}</td><td>{e(str(note))}</td></tr>"
                      for name, value, note in rows)
    people = "\n".join(f"<tr><td>{e(u['user'])}</td><td>{u['n']}</td><td>{_num(u['mean_hours'], 2)}</td>"
                       f"<td>{_num(u['mean_score'], 2)}</td><td>{_num(u['pearson_r'], 2)}</td></tr>"
                       for u in report["per_user"])
    figures = "\n".join(f'<figure><img alt="{e(name)}" src="data:image/png;base64,'
                        f'{base64.b64encode(data).decode()}"><figcaption>{e(name)}</figcaption></figure>'
                        for name, data in images.items())
    notes = "".join(f"<li>{e(n)}</li>" for n in report["notes"])
    period = f"{report['first_night'] or '–'} to {report['last_night'] or '–'}"
    window = (f"results from the wake time to {report['morning_hours']:g} h after it"
              if report["mood_source"] == "device" else "self-reports of the same date")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Sleep and the morning's emotion</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}th,td{{border-bottom:1px solid #ddd;padding:.3em .7em;text-align:left}}
th{{font-weight:600}}img{{max-width:100%}}.small{{color:#555;font-size:.9em}}</style></head><body>
<h1>Sleep and the morning's emotion</h1>
<p>People: {e(', '.join(report['users']) or 'none')}. Nights {e(period)}. Score: {e(report['score_definition'])}
({e(window)}).</p>
<table>{table}</table>
<p class="small">Statistics from scipy.stats (pearsonr, linregress, spearmanr, ttest_ind) and statsmodels
(MixedLM). A correlation over a few months of one person's nights says how the two moved together, not that
one caused the other.</p>
<ul class="small">{notes}</ul>
{figures}
<h2>Per person</h2>
<table><tr><th>person</th><th>nights</th><th>mean hours</th><th>mean score</th><th>own r</th></tr>
{people}</table>
<p class="small">The claim this report checks: {e(report['seed_claim'])}.</p>
</body></html>
"""


def report_html(db: sqlite3.Connection, users: Sequence[str], mood: str = "device", date_from: date | None = None,
                date_to: date | None = None, morning_hours: float = 3.0) -> str:
    """The whole HTML report as a string: what a dashboard page calls."""
    report, pairs = analyse(db, users, mood, date_from, date_to, morning_hours)
    return render_html(report, plots(pairs, report))


def summary_message(device_id: str, report: dict, wall: float) -> dict:
    """The short, flat summary published to `iotsensors/<device_id>/report` (schema 1)."""
    import hashlib
    import json

    from pi.messaging.messages import SCHEMA_VERSION
    from pi.messaging.messages import iso_utc as epoch_iso

    fields = {k: report[k] for k in ("n", "n_users", "pearson_r", "pearson_p", "spearman_r", "slope_per_hour",
                                     "within_person_r", "within_person_p", "short_n", "short_mean", "long_n",
                                     "long_mean", "long_minus_short", "mood_source", "first_night", "last_night")}
    for key in ("pearson_ci", "slope_ci", "long_minus_short_ci"):
        low, high = report[key] or (None, None)
        fields[f"{key}_low"], fields[f"{key}_high"] = low, high
    mixed = report.get("mixed_model") or {}
    fields["mixed_slope_per_hour"] = mixed.get("slope_per_hour")
    fields["users"] = ",".join(report["users"])
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
    return {"schema": SCHEMA_VERSION, "type": "report", "report": "sleep", "msg_id": f"{device_id}/report/{digest}",
            "device_id": device_id, "timestamp": epoch_iso(wall), **fields}
