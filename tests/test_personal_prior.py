"""The personal model's features over the wearer's recent past, and the population prior (pi/personal/model.py)."""
import json

import numpy as np
import pytest

from pi.errors import NoPriorWarning
from pi.messaging import messages
from pi.personal import model as physio_model
from pi.personal.model import (
    FEATURES,
    ModelRegistry,
    PopulationPrior,
    build_dataset,
    fit_logistic,
    fit_population_prior,
    fit_user,
    leave_one_session_out,
    load_prior,
    series_features,
    timelines,
    window_features,
)
from pi.physiology.sampler import SecondRecord
from pi.resources import PHYSIO_PRIOR, shipped

T0 = 1_790_000_000.0


def _series(n=900, seed=1):
    rng = np.random.default_rng(seed)
    scl = list(3.0 * np.exp(np.cumsum(rng.normal(0, 0.01, n))))
    bpm = list(72 + np.cumsum(rng.normal(0, 0.3, n)))
    for i in rng.choice(n, 120, replace=False):
        scl[i] = None
    for i in rng.choice(n, 150, replace=False):
        bpm[i] = None
    return scl, bpm


def _nan(values):
    return np.array([np.nan if v is None else v for v in values], float)


def _mean(v):
    return float(np.nanmean(v))


def test_each_feature_is_what_its_name_says_over_the_trailing_window():
    scl, bpm = _series()
    for end in (40, 130, 450, 899):
        f = dict(zip(FEATURES, window_features(scl[:end + 1], bpm[:end + 1])))
        b, g = _nan(bpm[:end + 1])[-600:], np.log(_nan(scl[:end + 1]))[-600:]
        assert f["bpm_mean"] == pytest.approx(_mean(b[-30:]))
        assert f["bpm_std"] == pytest.approx(float(np.nanstd(b[-30:])))
        assert f["bpm_mean_120"] == pytest.approx(_mean(b[-120:]))
        at = np.flatnonzero(~np.isnan(g[-60:]))
        assert f["scl_log_slope_60"] == pytest.approx(np.polyfit(at, g[-60:][at], 1)[0])
        assert f["scl_log_mean_60"] == pytest.approx(_mean(g[-60:]))
        assert f["bpm_rel_300"] == pytest.approx(_mean(b[-60:]) - _mean(b[-300:]))
        assert f["scl_log_rel_600"] == pytest.approx(_mean(g[-60:]) - _mean(g[-600:]))


def test_training_rows_and_the_devices_window_agree_on_every_second():
    """`series_features` (training, a whole recording at once) and `window_features` (the device's deque)."""
    scl, bpm = _series(700, seed=4)
    rows = series_features(_nan(scl), _nan(bpm))
    for end in (29, 59, 299, 599, 699):
        tail = slice(max(0, end + 1 - physio_model.HISTORY_S), end + 1)
        assert np.allclose(window_features(scl[tail], bpm[tail]), rows[end], atol=1e-9)
    assert window_features(scl[:3], bpm[:3]) is None and np.isnan(rows[:3]).all()  # too few seconds


def _session(session_id, label, start, seconds, bpm, scl=4.0):
    out = []
    for seq in range(seconds):
        second = SecondRecord(t=float(seq), wall=start + seq, skin_conductance=scl, bpm=bpm, contact=1.0,
                              hr_quality=1.0, samples=50, i2c_errors=0, late_ticks=0)
        out.append(messages.train_record("dev", "ann", session_id, seq, label, second))
    return out


def test_sessions_worn_in_sequence_share_history_and_overlapping_ones_stand_alone():
    rest = _session("rest-1", "rest", T0, 300, bpm=70.0)
    stress = _session("stress-1", "stress", T0 + 300, 120, bpm=90.0)  # right after the rest
    joined = timelines(stress + rest)
    assert [len(recs) for recs, _ in joined] == [420]
    ds = build_dataset(rest + stress)
    first_stress = ds.x[ds.session == "stress-1"][0]
    # its last minute is mostly the rest's 70 BPM, its 5 minutes are: the relative rate is barely up yet
    assert dict(zip(FEATURES, first_stress))["bpm_rel_300"] == pytest.approx(20 / 60 - 20 / 300)
    last_stress = dict(zip(FEATURES, ds.x[ds.session == "stress-1"][-1]))
    assert last_stress["bpm_rel_300"] == pytest.approx(90 - (180 * 70 + 120 * 90) / 300)
    # the same stress session recorded at the same time as the rest (a simulation): no shared past
    overlapping = _session("stress-2", "stress", T0 + 10, 120, bpm=90.0)
    assert sorted(len(recs) for recs, _ in timelines(rest + overlapping)) == [120, 300]
    alone = build_dataset(rest + overlapping)
    assert dict(zip(FEATURES, alone.x[alone.session == "stress-2"][-1]))["bpm_rel_300"] == pytest.approx(0.0)
    # a gap longer than the history starts a new timeline
    later = _session("stress-3", "stress", T0 + 300 + physio_model.HISTORY_S + 1, 60, bpm=90.0)
    assert len(timelines(rest + later)) == 2


def _timed(session_id, label, walls, bpm, scl=4.0):
    """A session whose k-th record (seq k) ends at walls[k]: a wall clock that may step mid-session."""
    out = []
    for seq, wall in enumerate(walls):
        second = SecondRecord(t=float(seq), wall=float(wall), skin_conductance=scl, bpm=bpm, contact=1.0,
                              hr_quality=1.0, samples=50, i2c_errors=0, late_ticks=0)
        out.append(messages.train_record("dev", "ann", session_id, seq, label, second))
    return out


def _grid_spy(monkeypatch, longest):
    """Make series_features refuse a grid longer than `longest` seconds (fast, instead of exhausting memory)."""
    real = physio_model.series_features

    def spy(scl, bpm):
        assert len(bpm) <= longest, f"a {len(bpm)}-second grid for {longest} recorded seconds"
        return real(scl, bpm)

    monkeypatch.setattr(physio_model, "series_features", spy)


@pytest.mark.parametrize("step_s", [30 * 86_400.0, -86_400.0])
def test_a_wall_clock_step_inside_a_session_cuts_the_timeline_instead_of_stretching_the_grid(monkeypatch, step_s):
    # an NTP step on a Pi without a real-time clock, 30 days forward or a day back, halfway through a session
    walls = [T0 + k + (step_s if k >= 300 else 0.0) for k in range(600)]
    records = _timed("s", "rest", walls, bpm=70.0) + _session("t", "stress", T0 + 700, 300, bpm=90.0)
    _grid_spy(monkeypatch, 1000)  # the session's first half and the next session: 1000 s of wall time
    parts = timelines(records)
    assert all(len(slots) == len(recs) and slots.max() < 1000 for recs, slots in parts)
    assert sum(len(recs) for recs, _ in parts) == 900
    after_step = [recs for recs, _ in parts if (recs[0]["session_id"], recs[0]["seq"]) == ("s", 300)]
    assert len(after_step) == 1 and len(after_step[0]) == 300  # the part after the step stands alone
    ds = build_dataset(records)
    assert len(ds.y) == 900 - 3 * (physio_model.MIN_VALID - 1)  # each of the 3 stretches after a gap starts sparse


def test_a_session_is_laid_out_by_seq_so_a_small_clock_step_neither_stretches_nor_folds_it():
    walls = [T0 + k + (600.0 if k >= 100 else 0.0) for k in range(200)]  # 10 min forward: within the history
    [(recs, slots)] = timelines(_timed("s", "rest", walls, bpm=70.0))
    assert np.array_equal(slots, np.arange(200)) and [r["seq"] for r in recs] == list(range(200))


def test_no_timeline_is_laid_on_a_grid_longer_than_the_cap(monkeypatch):
    monkeypatch.setattr(physio_model, "MAX_GRID_S", 100)
    # a 250-s session goes on as three timelines; the next session would take the last past the cap
    parts = timelines(_session("long", "rest", T0, 250, bpm=70.0) + _session("next", "rest", T0 + 250, 60, bpm=70.0))
    assert [len(recs) for recs, _ in parts] == [100, 100, 50, 60]
    assert all(slots.max() < 100 for _, slots in parts)
    with pytest.raises(ValueError, match="grid"):
        physio_model.timeline_samples(parts[0][0], np.arange(100) * 2)


def test_sessions_joined_half_a_second_apart_never_share_a_second():
    rest = _session("rest-1", "rest", T0, 300, bpm=70.0)
    stress = _session("stress-1", "stress", T0 + 299.4, 120, bpm=90.0)  # rounds onto the rest's last second
    [(recs, slots)] = timelines(rest + stress)
    assert np.array_equal(slots, np.arange(420))
    ds = build_dataset(rest + stress)
    last_rest = dict(zip(FEATURES, ds.x[ds.session == "rest-1"][-1]))
    assert last_rest["bpm_mean"] == pytest.approx(70.0)  # not overwritten by the stress session's first second
    first_stress = dict(zip(FEATURES, ds.x[ds.session == "stress-1"][0]))
    assert first_stress["bpm_mean"] == pytest.approx((29 * 70 + 90) / 30)


def test_a_session_overlapping_an_earlier_long_one_stands_alone_even_after_a_short_one():
    long = _session("long", "rest", T0, 1000, bpm=70.0)
    short = _session("short", "stress", T0 + 10, 20, bpm=90.0)  # inside the long one: alone
    overlapping = _session("overlap", "stress", T0 + 40, 60, bpm=90.0)  # after the short one, inside the long
    after = _session("after", "stress", T0 + 1005, 60, bpm=90.0)  # the long one is its recent past
    parts = timelines(long + short + overlapping + after)
    assert sorted(f"{recs[0]['session_id']}/{len(recs)}" for recs, _ in parts) == [
        "long/1060", "overlap/60", "short/20"]
    ds = build_dataset(long + short + overlapping + after)
    assert dict(zip(FEATURES, ds.x[ds.session == "overlap"][-1]))["bpm_rel_300"] == pytest.approx(0.0)
    assert dict(zip(FEATURES, ds.x[ds.session == "after"][0]))["bpm_rel_300"] > 0  # after the long rest


def _rest_stress_person(rng, user, start, seconds=120, drift=0.0):
    """Seven alternating rest/stress sessions in sequence: stress raises heart rate and conductance."""
    records, hr, scl = [], float(rng.normal(70, 8)), float(np.exp(rng.normal(1.0, 0.4)))
    for k, label in enumerate(["rest", "stress"] * 3 + ["rest"]):
        up = label == "stress"
        bpm = hr + drift * k + (6.0 if up else 0.0) + float(rng.normal(0, 1.5))
        level = scl * (1.25 if up else 1.0) * float(np.exp(rng.normal(0, 0.05)))
        for r in _session(f"{user}-{k}", label, start + k * seconds, seconds, bpm, level):
            r["user"] = user
            r["bpm"] = round(bpm + float(rng.normal(0, 2.0)), 1)
            records.append(r)
    return records


def test_the_prior_pulls_a_wearer_towards_the_population_and_its_worth_sets_how_far():
    rng = np.random.default_rng(0)
    people = {f"p{i}": build_dataset(_rest_stress_person(rng, f"p{i}", T0 + i * 10_000)) for i in range(4)}
    prior = fit_population_prior(people, worth_s=10_000.0, source="test people")
    assert prior.classes == ["rest", "stress"] and prior.subjects == ["p0", "p1", "p2", "p3"]
    bpm_now = FEATURES.index("bpm_mean_60")
    assert prior.theta[bpm_now, 1] > prior.theta[bpm_now, 0]  # a faster heart: stress, for the population
    # a wearer whose own sessions say the opposite (drifting down through the protocol) ...
    ds = build_dataset(_rest_stress_person(rng, "odd", T0, drift=-5.0))
    z = physio_model.zscore(ds.x, *physio_model.own_normalisation(ds))
    very_strong = PopulationPrior(**{**prior.__dict__, "worth_s": 1e10})
    pulled, _ = fit_logistic(z, ds.y, 2, ds.weight, prior=very_strong)
    assert np.allclose(pulled, prior.theta[:-1], atol=1e-3)  # an overwhelming prior: the population fit
    # the more the prior is worth against the wearer's own seconds, the closer the fit stays to it
    distances, fits_own = [], []
    for worth in (1e1, 1e3, 1e5, 1e7):
        w, b = fit_logistic(z, ds.y, 2, ds.weight, prior=PopulationPrior(**{**prior.__dict__, "worth_s": worth}))
        distances.append(float(np.abs(w - prior.theta[:-1]).sum()))
        fits_own.append(float(np.mean((z @ w + b).argmax(axis=1) == ds.y)))
    assert distances == sorted(distances, reverse=True) and distances[0] > 10 * distances[-1]
    assert fits_own[0] > fits_own[-1]  # a weak prior lets the wearer's own (odd) sessions win
    # the same prior worth counts for less against more of the wearer's own rows
    assert np.allclose(prior.precision(2000), 2 * prior.precision(4000))


def test_the_prior_applies_to_its_own_classes_and_survives_a_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    people = {f"p{i}": build_dataset(_rest_stress_person(rng, f"p{i}", T0 + i * 10_000)) for i in range(3)}
    prior = fit_population_prior(people, source="three test people")
    path = tmp_path / "prior.json"
    path.write_text(json.dumps(prior.to_json()))
    again = load_prior(path)
    assert np.array_equal(again.theta, prior.theta) and np.array_equal(again.precision(3000), prior.precision(3000))
    assert again.applies_to(["rest", "stress"]) and not again.applies_to(["happy", "sad"])
    wearer = _rest_stress_person(rng, "new", T0)
    report, model = fit_user(wearer, ModelRegistry(tmp_path, "new"), prior=again)
    assert report["prior"] == "three test people" and model is not None
    assert model.data["prior"] == {"source": "three test people", "worth_s": prior.worth_s, "subjects": 3}
    assert model.data["l2"] is None  # the prior was the penalty
    alone, _ = fit_user(wearer, ModelRegistry(tmp_path, "alone"), use_shipped_prior=False)
    assert alone["prior"] is None


@pytest.mark.parametrize("text, says", [
    ("{not json", "cannot read the population prior"),
    ('{"classes": ["rest", "stress"]}', "not a physiology population prior"),
    ('{"classes": ["rest", "stress"], "features": ["a"], "theta": [[1, 2]], "hessian": [[1]], "l2": 1,'
     ' "worth_s": 1, "subjects": [], "source": "x"}', "shapes disagree"),
])
def test_a_broken_prior_file_is_named_in_the_error(tmp_path, text, says):
    path = tmp_path / "prior.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=says) as err:
        load_prior(path)
    assert str(path) in str(err.value)


def test_a_corrupt_shipped_prior_degrades_fit_to_the_wearers_own_data_and_a_named_one_stays_fatal(
        tmp_path, monkeypatch):
    broken = tmp_path / "physio_prior.json"
    broken.write_text('{"classes": ["rest", "stress"], "theta": [[1')  # e.g. cut short by a failed update
    monkeypatch.setattr(physio_model, "shipped", lambda resource: broken)
    wearer = _rest_stress_person(np.random.default_rng(3), "new", T0)
    with pytest.warns(NoPriorWarning, match="cannot read the population prior.*without the population prior"):
        report, model = fit_user(wearer, ModelRegistry(tmp_path, "new"))  # `emotion-edge fit` on the device
    assert report["prior"] is None and "macro_f1" in report
    with pytest.raises(ValueError, match="cannot read the population prior"):
        load_prior(broken)  # a prior the user names (eval_stress_predict --prior) is not second-guessed


def test_the_shipped_prior_is_for_the_devices_features_and_was_fitted_on_real_people():
    prior = load_prior(shipped(PHYSIO_PRIOR))
    assert prior.features == list(FEATURES) and prior.classes == ["rest", "stress"]
    assert len(prior.subjects) == 28 and "Stress-Predict" in prior.source
    eigenvalues = np.linalg.eigvalsh(prior.precision(3600))
    assert eigenvalues.min() > 0  # a proper Gaussian: every direction is penalised
    assert prior.theta[FEATURES.index("bpm_mean_60"), 1] != 0


def test_the_4_emotion_model_is_not_touched_by_the_stress_prior(tmp_path):
    rng = np.random.default_rng(2)
    records = []
    for k, emotion in enumerate(["happy", "sad"] * 3):
        for r in _session(f"e-{k}", emotion, T0 + k * 60, 60, 70.0 + 5 * (emotion == "happy") + rng.normal()):
            records.append(r)
    ds = build_dataset(records)
    report = leave_one_session_out(ds, load_prior())
    assert report["prior"] is None
