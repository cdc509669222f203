"""Analog PPG (pulse sensor on an ADC channel) as an alternative heart-rate input.

Beat detection after HeartPy's recipe: a 0.75 s moving average is the baseline; each excursion of the
signal above the (lifted) baseline holds one peak; the lift giving the steadiest intervals wins; each peak
is refined to sub-sample time with a parabola. numpy only, so it runs on
a Pi without SciPy. `PpgBeatDetector` applies the same to a stream, one second at a time.
"""
from __future__ import annotations

from collections import deque

import numpy as np


def _moving_average(x: np.ndarray, n: int) -> np.ndarray:
    n = max(1, int(n))
    kernel = np.ones(n) / n
    padded = np.pad(x, (n // 2, n - 1 - n // 2), mode="edge")
    return np.convolve(padded, kernel, mode="valid")


def _peaks_above(x: np.ndarray, baseline: np.ndarray, min_gap: float) -> np.ndarray:
    """Index of the maximum of each excursion of x above baseline, dropping ones closer than min_gap."""
    above = np.concatenate(([False], x > baseline, [False]))
    starts = np.flatnonzero(~above[:-1] & above[1:])
    ends = np.flatnonzero(above[:-1] & ~above[1:])
    peaks: list[int] = []
    for a, b in zip(starts, ends):
        idx = int(a) + int(np.argmax(x[a:b]))
        if peaks and idx - peaks[-1] < min_gap:
            if x[idx] > x[peaks[-1]]:
                peaks[-1] = idx
            continue
        peaks.append(idx)
    return np.asarray(peaks, dtype=int)


def detect_beats(signal: np.ndarray, fs: float, max_bpm: float = 220.0, min_bpm: float = 30.0) -> np.ndarray:
    """Times (s from the first sample) of the systolic peaks in a PPG recording sampled at `fs` Hz.

    One peak per excursion above a 0.75 s moving average lifted by a fraction of the signal range; the
    lift is chosen, as HeartPy does, to give the steadiest plausible beat intervals (lowest RR spread).
    """
    x = np.asarray(signal, dtype=float)
    if x.ndim != 1 or len(x) < 2 * fs:
        return np.empty(0)
    x = _moving_average(x, round(0.05 * fs))
    baseline = _moving_average(x, round(0.75 * fs))
    span = np.percentile(x, 99) - np.percentile(x, 1)
    min_gap = 60.0 / max_bpm * fs
    best, best_spread = np.empty(0, dtype=int), np.inf
    for lift in (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3):
        peaks = _peaks_above(x, baseline + lift * span, min_gap)
        if len(peaks) < 3:
            continue
        rr = np.diff(peaks) / fs
        bpm = 60.0 / np.mean(rr)
        if not min_bpm <= bpm <= max_bpm:
            continue
        spread = float(np.std(rr))
        if spread < best_spread:
            best, best_spread = peaks, spread
    times = []
    for p in best:
        if 0 < p < len(x) - 1:
            y0, y1, y2 = x[p - 1], x[p], x[p + 1]
            denom = y0 - 2 * y1 + y2
            offset = float(np.clip(0.5 * (y0 - y2) / denom, -0.5, 0.5)) if denom != 0 else 0.0
        else:
            offset = 0.0
        times.append((p + offset) / fs)
    return np.asarray(times)


class PpgBeatDetector:
    """Streaming wrapper: buffers samples and emits each beat once, about a second after it happens."""

    def __init__(self, fs: float, max_bpm: float = 220.0, buffer_s: float = 5.0, settle_s: float = 0.4):
        self.fs = fs
        self.max_bpm = max_bpm
        self.settle_s = settle_s
        self._t: deque[float] = deque(maxlen=int(buffer_s * fs))
        self._v: deque[float] = deque(maxlen=int(buffer_s * fs))
        self._last_run: float | None = None
        self._last_emitted = -np.inf

    def feed(self, t: float, mv: float) -> list[float]:
        """Add a sample; return beat times found since the previous call that ran detection."""
        self._t.append(t)
        self._v.append(mv)
        if self._last_run is None:
            self._last_run = t
        if t - self._last_run < 1.0 or len(self._v) < self.fs * 2:
            return []
        self._last_run = t
        times = np.asarray(self._t)
        beats = detect_beats(np.asarray(self._v), self.fs, self.max_bpm)
        new = []
        min_gap = 60.0 / self.max_bpm
        for rel in beats:
            # map the sample position back to clock time: the sampler may have skipped late ticks
            bt = float(np.interp(rel * self.fs, np.arange(len(times)), times))
            # peaks at either edge of the buffer may be cut excursions, not maxima: wait or skip them
            if bt > t - self.settle_s or bt < times[0] + self.settle_s or bt <= self._last_emitted + min_gap:
                continue
            new.append(float(bt))
            self._last_emitted = bt
        return new

    def reset(self) -> None:
        self._t.clear()
        self._v.clear()
        self._last_run = None
        self._last_emitted = -np.inf
