"""The sampling loop: reads GSR and heart-rate channels at a fixed rate and emits per-second records.

Ticks are scheduled on absolute times (start + k/rate) of a steady clock, so the rate does not drift with
the loop's own run time; a tick that is late by more than a period is skipped and counted. I2C errors
that survive the driver's retries cost that sample only: they are counted into the second's record and
logged once per second, and sampling goes on.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass
from typing import Callable

from drivers.grove_adc import GroveBaseHatADC
from drivers.gsr import GsrSensor
from pi.clock import Clock
from pi.errors import I2CError
from pi.physiology.beat_rate import BeatRateEstimator
from pi.physiology.edges import PulseEdgeDetector
from pi.physiology.ppg import PpgBeatDetector

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SecondRecord:
    """Physiology of one second. Conductance/BPM are None when there was no contact or no valid beats."""

    t: float  # clock time at the end of the second
    wall: float  # UTC epoch seconds at the end of the second
    skin_conductance: float | None  # µS, mean over the in-contact samples
    bpm: float | None
    contact: float  # fraction of GSR samples with skin contact
    hr_quality: float  # fraction of recent beat intervals accepted
    samples: int
    i2c_errors: int
    late_ticks: int

    @property
    def quality(self) -> str:
        """One word for the record: ok, no_contact, no_heart_rate, poor (errors or partial contact)."""
        if self.contact < 0.5 or self.skin_conductance is None:
            return "no_contact"
        if self.bpm is None:
            return "no_heart_rate"
        if self.i2c_errors or self.contact < 1.0 or self.hr_quality < 0.7 or self.late_ticks > self.samples / 10:
            return "poor"
        return "ok"

    def as_dict(self) -> dict:
        return {**asdict(self), "quality": self.quality}


class HeartInput:
    """Turns samples of the heart channel (or GPIO edges) into beats for the rate estimator."""

    def __init__(self, source: str, estimator: BeatRateEstimator, rate_hz: float, threshold_mv: float,
                 hysteresis_mv: float):
        self.source = source
        self.estimator = estimator
        self.edges = PulseEdgeDetector(threshold_mv, hysteresis_mv) if source == "adc" else None
        self.ppg = PpgBeatDetector(rate_hz, max_bpm=60.0 / estimator.min_interval) if source == "ppg" else None

    @property
    def sampled(self) -> bool:
        return self.source in ("adc", "ppg")

    def feed(self, t: float, mv: float) -> None:
        if self.edges is not None:
            edge = self.edges.feed(t, mv)
            if edge is not None:
                self.estimator.add_beat(edge)
        elif self.ppg is not None:
            for beat in self.ppg.feed(t, mv):
                self.estimator.add_beat(beat)


class Sampler:
    """Background thread sampling the hat; `on_second(record)` is called once per clock second."""

    def __init__(self, adc: GroveBaseHatADC, gsr: GsrSensor, heart: HeartInput, clock: Clock,
                 rate_hz: float = 50.0, gsr_channel: int = 0, heart_channel: int = 4,
                 on_second: Callable[[SecondRecord], None] | None = None):
        self.adc = adc
        self.gsr = gsr
        self.heart = heart
        self.clock = clock
        self.period = 1.0 / rate_hz
        self.rate_hz = rate_hz
        self.gsr_channel = gsr_channel
        self.heart_channel = heart_channel
        self.on_second = on_second
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.records_emitted = 0
        self._acc = _SecondAccumulator()

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
        """Take one sample of both channels at clock time `t` (the loop calls this on every tick)."""
        acc = self._acc
        acc.samples += 1
        try:
            raw = self.adc.read_raw(self.gsr_channel)
            reading = self.gsr.convert(raw)
            acc.gsr_samples += 1
            if reading.contact:
                acc.contact += 1
                acc.conductance_sum += reading.conductance_us
            if self.heart.sampled:
                self.heart.feed(t, self.adc.read_voltage_mv(self.heart_channel))
        except (I2CError, ValueError) as exc:  # ValueError: a corrupt word (e.g. 0xFFFF) from the bus
            acc.i2c_errors += 1
            acc.last_error = str(exc)

    def end_second(self, t: float) -> SecondRecord:
        """Close the second ending at clock time `t`: build its record and hand it to `on_second`."""
        acc, self._acc = self._acc, _SecondAccumulator()
        if acc.i2c_errors:
            log.warning("I2C: %d failed sample(s) in the last second: %s", acc.i2c_errors, acc.last_error)
        hr = self.heart.estimator.rate(t)
        record = SecondRecord(
            t=t, wall=self.clock.wall() - (self.clock.monotonic() - t),
            skin_conductance=acc.conductance_sum / acc.contact if acc.contact else None,
            bpm=hr.bpm, contact=acc.contact / acc.gsr_samples if acc.gsr_samples else 0.0,
            hr_quality=hr.quality, samples=acc.samples, i2c_errors=acc.i2c_errors, late_ticks=acc.late)
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
