"""The sampling loop: reads the heart-rate and GSR channels at fixed rates and emits per-second records.

The loop ticks at `rate_hz`, the heart channel's rate (200 Hz by default: the ear clip's beat pulse is a
short digital pulse that a slower rate can step over); the GSR channel, which moves over seconds, is read
on every n-th tick (`gsr_rate_hz`, 50 Hz by default). Ticks are scheduled on absolute times
(start + k/rate) of a steady clock, so the rate does not drift with the loop's own run time; a tick that is
late by more than a period is skipped and counted. I2C errors that survive the driver's retries cost that
sample only: they are counted into the second's record and logged once per second, and sampling goes on.
Each second also gets a presence verdict per channel (pi.physiology.presence): a channel that reads like
an unplugged, floating input is reported as `no_sensor`, never as contact or beats.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass
from typing import Callable

from drivers.grove_adc import NOMINAL_SUPPLY_MV, GroveBaseHatADC
from drivers.gsr import GsrSensor
from pi.clock import Clock
from pi.errors import I2CError
from pi.physiology.beat_rate import BeatRateEstimator
from pi.physiology.edges import PulseEdgeDetector
from pi.physiology.ppg import PpgBeatDetector
from pi.physiology.presence import GsrPresence, PulseLinePresence

log = logging.getLogger(__name__)

SENSOR_STATES = ("ok", "gsr_not_connected", "heart_not_connected", "not_connected")


# A second's BPM is trusted when at least half of its recent beat intervals were accepted. Measured on real
# wrist PPG (Stress-Predict, README): 2.1 BPM from the E4's own beat intervals, 81 % of rest windows kept;
# 0.7 kept only 49 % for 1.7 BPM. The personal model and the window's reported rate use the same gate.
HR_QUALITY_MIN = 0.5


@dataclass(frozen=True)
class SecondRecord:
    """Physiology of one second. Conductance/BPM are None when there was no contact or no valid beats."""

    t: float  # clock time at the end of the second
    wall: float  # UTC epoch seconds at the end of the second
    skin_conductance: float | None  # µS, mean over the in-contact samples
    bpm: float | None
    contact: float  # fraction of GSR samples with skin contact
    hr_quality: float  # fraction of recent beat intervals accepted
    samples: int  # ticks of the loop (heart-channel samples)
    i2c_errors: int
    late_ticks: int
    sensor: str = "ok"  # one of SENSOR_STATES: which channel reads like an unplugged input

    @property
    def quality(self) -> str:
        """One word: ok, no_sensor, no_contact, no_heart_rate, poor (errors or partial contact)."""
        if self.sensor != "ok":
            return "no_sensor"
        if self.contact < 0.5 or self.skin_conductance is None:
            return "no_contact"
        if self.bpm is None:
            return "no_heart_rate"
        if (self.i2c_errors or self.contact < 1.0 or self.hr_quality < HR_QUALITY_MIN
                or self.late_ticks > self.samples / 10):
            return "poor"
        return "ok"

    @property
    def gated_bpm(self) -> float | None:
        """The BPM if its beat intervals pass the quality gate (HR_QUALITY_MIN), else None.

        A wrist or ear in motion gives a rate that looks plausible and is wrong: the window's `bpm_mean`,
        its `bpm_series`, the personal model and the alert rules all use this one gated value.
        """
        return self.bpm if self.bpm is not None and self.hr_quality >= HR_QUALITY_MIN else None

    def as_dict(self) -> dict:
        return {**asdict(self), "quality": self.quality}


class HeartInput:
    """Turns samples of the heart channel (or GPIO edges) into beats for the rate estimator.

    Sampled beats are held until the end of their second (`commit()`), so that a second whose channel
    turns out to be floating can drop them (`discard()`) instead of feeding noise to the estimator.
    """

    def __init__(self, source: str, estimator: BeatRateEstimator, rate_hz: float, threshold_mv: float,
                 hysteresis_mv: float):
        self.source = source
        self.estimator = estimator
        self.threshold_mv = threshold_mv
        self.edges = PulseEdgeDetector(threshold_mv, hysteresis_mv) if source == "adc" else None
        self.ppg = PpgBeatDetector(rate_hz, max_bpm=60.0 / estimator.min_interval) if source == "ppg" else None
        self._pending: list[float] = []

    @property
    def sampled(self) -> bool:
        return self.source in ("adc", "ppg")

    def feed(self, t: float, mv: float) -> int:
        """Add one sample of the heart channel; return how many beats it completed (held until commit)."""
        if self.edges is not None:
            edge = self.edges.feed(t, mv)
            if edge is None:
                return 0
            self._pending.append(edge)
            return 1
        if self.ppg is not None:
            beats = self.ppg.feed(t, mv)
            self._pending.extend(beats)
            return len(beats)
        return 0

    def commit(self) -> None:
        """Hand the held beats to the estimator."""
        pending, self._pending = self._pending, []
        for beat in pending:
            self.estimator.add_beat(beat)

    def discard(self) -> None:
        """Drop the held beats (they came from a floating input) and restart edge detection."""
        self._pending = []
        if self.edges is not None:
            self.edges.reset()


class Sampler:
    """Background thread sampling the hat; `on_second(record)` is called once per clock second."""

    def __init__(self, adc: GroveBaseHatADC, gsr: GsrSensor, heart: HeartInput, clock: Clock,
                 rate_hz: float = 200.0, gsr_channel: int = 0, heart_channel: int = 4,
                 on_second: Callable[[SecondRecord], None] | None = None, gsr_rate_hz: float | None = None):
        """`rate_hz` is the tick (heart-channel) rate; `gsr_rate_hz` (default: every tick) must divide it."""
        gsr_rate_hz = rate_hz if gsr_rate_hz is None else gsr_rate_hz
        every = rate_hz / gsr_rate_hz
        if gsr_rate_hz <= 0 or abs(every - round(every)) > 1e-9 or round(every) < 1:
            raise ValueError(f"gsr_rate_hz ({gsr_rate_hz}) must divide rate_hz ({rate_hz}) evenly")
        self.adc = adc
        self.gsr = gsr
        self.heart = heart
        self.clock = clock
        self.period = 1.0 / rate_hz
        self.rate_hz = rate_hz
        self.gsr_rate_hz = gsr_rate_hz
        self.gsr_every = int(round(every))
        self.gsr_channel = gsr_channel
        self.heart_channel = heart_channel
        self.on_second = on_second
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.records_emitted = 0
        self._ticks = 0
        self._acc = _SecondAccumulator()
        self.gsr_presence = GsrPresence()
        supply = getattr(adc, "supply_mv", NOMINAL_SUPPLY_MV)
        self.heart_presence = (PulseLinePresence(heart.threshold_mv, supply, 60.0 / heart.estimator.min_interval)
                               if heart.source == "adc" else None)
        self.sensor = "ok"

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        start = self.clock.monotonic()
        tick = 0
        second_end = start + 1.0
        while not self._stop.is_set():
            due = start + tick * self.period
            now = self.clock.monotonic()
            if now - due > self.period:  # we fell behind: skip the missed ticks instead of bunching them
                missed = int((now - due) / self.period)
                self._acc.late += missed
                tick += missed
                due = start + tick * self.period
            if self.clock.wait(due - now, self._stop):
                break
            self.sample_once(due)
            tick += 1
            if due + self.period >= second_end - 1e-9:
                self.end_second(second_end)
                second_end += 1.0

    def sample_once(self, t: float) -> None:
        """Take one tick's samples at clock time `t` (the heart channel every tick, the GSR every n-th)."""
        acc = self._acc
        acc.samples += 1
        tick, self._ticks = self._ticks, self._ticks + 1
        if tick % self.gsr_every == 0:
            try:
                raw = self.adc.read_raw(self.gsr_channel)
                reading = self.gsr.convert(raw)
            except (I2CError, ValueError) as exc:  # ValueError: a word the GSR cannot produce
                acc.i2c_errors += 1
                acc.last_error = str(exc)
            else:
                acc.gsr_samples += 1
                self.gsr_presence.feed(raw)
                if reading.conductance_us is not None:  # set exactly when there is contact
                    acc.contact += 1
                    acc.conductance_sum += reading.conductance_us
        if self.heart.sampled:
            try:
                mv = self.adc.read_voltage_mv(self.heart_channel)
            except I2CError as exc:
                acc.i2c_errors += 1
                acc.last_error = str(exc)
            else:
                beats = self.heart.feed(t, mv)
                if self.heart_presence is not None:
                    self.heart_presence.feed(mv, beats > 0)

    def _sensor_state(self) -> str:
        """This second's presence verdicts as one of SENSOR_STATES (an undecided channel counts as present)."""
        gsr_ok = self.gsr_presence.verdict() is not False
        heart_ok = self.heart_presence is None or self.heart_presence.verdict() is not False
        state = SENSOR_STATES[(not gsr_ok) + 2 * (not heart_ok)]
        if state != self.sensor:
            if state == "ok":
                log.warning("sensors: every channel reads like a connected sensor again")
            else:
                log.warning("sensors: %s (A%d GSR, A%d heart): the input reads like an unplugged, floating "
                            "pin; reporting no_sensor until it stops", state, self.gsr_channel, self.heart_channel)
            self.sensor = state
        return state

    def end_second(self, t: float) -> SecondRecord:
        """Close the second ending at clock time `t`: build its record and hand it to `on_second`."""
        acc, self._acc = self._acc, _SecondAccumulator()
        if acc.i2c_errors:
            log.warning("I2C: %d failed sample(s) in the last second: %s", acc.i2c_errors, acc.last_error)
        sensor = self._sensor_state()
        heart_floating = sensor in ("heart_not_connected", "not_connected")
        gsr_floating = sensor in ("gsr_not_connected", "not_connected")
        if heart_floating:
            self.heart.discard()
        else:
            self.heart.commit()
        hr = self.heart.estimator.rate(t)
        contact = acc.contact / acc.gsr_samples if acc.gsr_samples and not gsr_floating else 0.0
        record = SecondRecord(
            t=t, wall=self.clock.wall() - (self.clock.monotonic() - t),
            skin_conductance=acc.conductance_sum / acc.contact if acc.contact and not gsr_floating else None,
            bpm=None if heart_floating else hr.bpm, contact=contact,
            hr_quality=0.0 if heart_floating else hr.quality, samples=acc.samples, i2c_errors=acc.i2c_errors,
            late_ticks=acc.late, sensor=sensor)
        self.records_emitted += 1
        if self.on_second is not None:
            try:
                self.on_second(record)
            except Exception:  # a consumer bug must not stop sampling
                log.exception("per-second consumer failed")
        return record


class _SecondAccumulator:
    __slots__ = ("samples", "gsr_samples", "contact", "conductance_sum", "i2c_errors", "last_error", "late")

    def __init__(self):
        self.samples = self.gsr_samples = self.contact = self.i2c_errors = self.late = 0
        self.conductance_sum = 0.0
        self.last_error = ""
