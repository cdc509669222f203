"""A simulated person wearing the GSR electrodes and the ear clip, feeding the simulated hat's inputs.

Skin conductance = tonic level (person's baseline x the emotion's arousal, slow drift) + phasic skin
conductance responses (Poisson events, bi-exponential shape, rate and size rising with arousal) + noise.
The heart beats at the emotion's rate (plus the person's offset, beat-to-beat variability and a slow
respiratory swing); the ear clip outputs a high pulse per beat (`pulse_width_s`, 80 ms unless told), with
occasional spurious pulses. Seeed documents the module only as "a high pulse when beating" read by an
interrupt on the rising edge; the width is not published, hence the parameter (tests run the ADC path
on the shortest plausible pulse, SHORTEST_PLAUSIBLE_PULSE_S).
Finger-off episodes put both sensors out of contact. Everything is a function of simulated time on the
given clock and of the seed, so runs are reproducible.
"""
from __future__ import annotations

import bisect
import math
import threading
from dataclasses import dataclass

import numpy as np

from drivers.gsr import GsrSensor


@dataclass(frozen=True)
class EmotionProfile:
    """How an emotion moves the body: tonic conductance factor, heart rate, phasic responses per minute."""

    scl_factor: float
    bpm: float
    scr_per_min: float


# Arousal ordering after the affective-physiology literature: fear/anger high, sadness low.
PROFILES = {
    "neutral": EmotionProfile(1.00, 70, 2.0),
    "happy": EmotionProfile(1.35, 80, 5.0),
    "sad": EmotionProfile(0.80, 64, 1.0),
    "angry": EmotionProfile(1.90, 95, 8.0),
    "fear": EmotionProfile(2.10, 102, 10.0),
    "surprise": EmotionProfile(1.60, 88, 7.0),
    "disgust": EmotionProfile(1.30, 76, 4.0),
    "baseline": EmotionProfile(1.00, 68, 1.5),
    # Calibrated to real wrist recordings (Stress-Predict, 28 people, Empatica E4; scripts/eval_stress_predict.py
    # and REAL_SPREAD below): stress tasks raise conductance by a median factor of 1.21 and heart rate by a
    # median 4.6 BPM over rest, and skin conductance responses from 3.8 to 5.7 a minute.
    "rest": EmotionProfile(1.00, 70, 3.8),
    "stress": EmotionProfile(1.21, 74.6, 5.7),
}

# How much real people and their sessions differ (Stress-Predict, medians over people; log = natural log):
# the wearers' resting conductance spreads over sd 0.92 in log (median 0.37 µS on the wrist); from one rest
# session to the next the same wearer's level moves by sd 0.32 in log and the heart rate by sd 3.0 BPM; the
# stress effect itself differs between people by sd 0.25 in log conductance and sd 5.4 BPM.
REAL_SPREAD = {"log_scl_between_people": 0.92, "log_scl_between_sessions": 0.32, "bpm_between_sessions": 3.0,
               "log_scl_stress_effect_sd": 0.25, "bpm_stress_effect_sd": 5.4}

PULSE_HIGH_MV = 3100.0
PULSE_LOW_MV = 30.0
PULSE_WIDTH_S = 0.08
# The narrowest beat pulse the ADC path is designed to catch (heart channel at 200 Hz: every 10 ms pulse
# holds at least one sample, with the sampler's tick jitter). Spurious pulses are narrower still.
SHORTEST_PLAUSIBLE_PULSE_S = 0.010


class SimulatedPerson:
    """Signals of one simulated wearer; `gsr_mv(t)` and `pulse_mv(t)` are the two analog sources."""

    def __init__(self, emotion: str = "neutral", seed: int = 0, *, baseline_us: float | None = None,
                 hr_offset: float | None = None, bpm: float | None = None, finger_off_every_s: float = 0.0,
                 finger_off_s: float = 4.0, glitch_prob: float = 0.02, vref_mv: float = 3300.0,
                 gsr: GsrSensor | None = None, pulse_width_s: float = PULSE_WIDTH_S):
        if not 0 < pulse_width_s < 0.25:
            raise ValueError(f"pulse_width_s must be in (0, 0.25) s, got {pulse_width_s}")
        self.rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self.baseline_us = baseline_us if baseline_us is not None else float(self.rng.uniform(2.0, 8.0))
        self.hr_offset = hr_offset if hr_offset is not None else float(self.rng.normal(0, 5))
        self.fixed_bpm = bpm
        self.finger_off_every_s = finger_off_every_s
        self.finger_off_s = finger_off_s
        self.glitch_prob = glitch_prob
        self.vref_mv = vref_mv
        self.pulse_width_s = pulse_width_s
        self.gsr = gsr or GsrSensor()
        self.drift_phase = float(self.rng.uniform(0, 2 * math.pi))
        self.set_emotion(emotion)
        self._beats: list[float] = []  # beat times generated so far
        self._glitches: list[float] = []
        self._scr: list[tuple[float, float]] = []  # (onset, amplitude µS)
        self._generated_to = 0.0

    def set_emotion(self, emotion: str) -> None:
        if emotion not in PROFILES:
            raise ValueError(f"unknown simulated emotion {emotion!r}; known: {', '.join(PROFILES)}")
        with self._lock:
            self.emotion = emotion
            self.profile = PROFILES[emotion]

    @property
    def bpm(self) -> float:
        """The person's current mean heart rate."""
        return self.fixed_bpm if self.fixed_bpm is not None else self.profile.bpm + self.hr_offset

    def in_contact(self, t: float) -> bool:
        if self.finger_off_every_s <= 0:
            return True
        return (t % self.finger_off_every_s) < self.finger_off_every_s - self.finger_off_s

    def _generate(self, until: float) -> None:
        """Extend the beat train and the SCR events up to `until` seconds."""
        while self._generated_to < until:
            t = self._generated_to
            last = self._beats[-1] if self._beats else -float(self.rng.uniform(0, 60.0 / self.bpm))
            interval = 60.0 / self.bpm
            rsa = 0.03 * math.sin(2 * math.pi * 0.25 * last)  # respiratory sinus arrhythmia
            beat = last + interval * (1 + rsa + float(self.rng.normal(0, 0.02)))
            self._beats.append(beat)
            if self.rng.random() < self.glitch_prob:
                self._glitches.append(last + float(self.rng.uniform(0.25, 0.55)) * (beat - last))
            rate_per_s = self.profile.scr_per_min / 60.0
            step = max(beat - t, 1e-3)
            if self.rng.random() < rate_per_s * step:
                amp = float(self.rng.uniform(0.05, 0.25)) * self.baseline_us * self.profile.scl_factor
                self._scr.append((t + float(self.rng.uniform(0, step)), amp))
            self._generated_to = beat

    def conductance_us(self, t: float) -> float:
        """Skin conductance at time t (before sensor noise)."""
        with self._lock:
            self._generate(t + 2.0)
            tonic = self.baseline_us * self.profile.scl_factor * (1 + 0.05 * math.sin(2 * math.pi * t / 180
                                                                                        + self.drift_phase))
            phasic = 0.0
            for onset, amp in reversed(self._scr):
                dt = t - onset
                if dt > 30:
                    break
                if dt > 0:  # bi-exponential SCR: rise ~0.75 s, recovery ~4 s, peak normalised to amp
                    phasic += amp * 1.6 * (math.exp(-dt / 4.0) - math.exp(-dt / 0.75))
        return tonic + phasic

    def gsr_mv(self, t: float) -> float:
        """Voltage at A0: the GSR module's output for the current conductance (or no contact)."""
        if not self.in_contact(t):
            reading = self.gsr.no_contact_reading + self.rng.normal(0, 3)
        else:
            reading = self.gsr.reading_for(self.conductance_us(t)) + self.rng.normal(0, 1.5)
        return float(reading) / 4095 * self.vref_mv

    def pulse_mv(self, t: float) -> float:
        """Voltage at A4: the ear clip's digital pulse line."""
        if not self.in_contact(t):
            return PULSE_LOW_MV
        with self._lock:
            self._generate(t + 2.0)
            high = (self._pulse_at(self._beats, t, self.pulse_width_s)
                    or self._pulse_at(self._glitches, t, min(0.03, self.pulse_width_s)))
        noise = float(self.rng.normal(0, 15))
        return (PULSE_HIGH_MV if high else PULSE_LOW_MV) + noise

    @staticmethod
    def _pulse_at(times: list[float], t: float, width: float) -> bool:
        i = bisect.bisect_right(times, t) - 1
        return i >= 0 and t - times[i] < width

    def attach(self, bus, gsr_channel: int = 0, heart_channel: int = 4) -> None:
        """Wire the person to a SimulatedSMBus: GSR to one ADC input, the ear clip to another."""
        bus.connect(gsr_channel, self.gsr_mv)
        bus.connect(heart_channel, self.pulse_mv)
