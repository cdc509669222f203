"""Heart rate from beat times, with artefact rejection (one estimator for every way beats come in).

A beat closer to the previous one than 60/max_bpm s, or than 70 % of the recent median interval, is a
glitch and ignored; an interval longer than 60/min_bpm s (or 1.6x the median) is a missed beat and not
averaged.
"""
from __future__ import annotations

import statistics
import threading
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class HeartRate:
    bpm: float | None
    quality: float  # fraction of recent intervals accepted (0 when no rate)
    beats: int  # accepted intervals behind the figure


class BeatRateEstimator:
    """BPM over a sliding window of beat intervals, with artefact rejection."""

    def __init__(self, min_bpm: float = 30.0, max_bpm: float = 220.0, window_s: float = 10.0):
        self.min_interval = 60.0 / max_bpm
        self.max_interval = 60.0 / min_bpm
        self.window_s = window_s
        self._last_beat: float | None = None
        self._intervals: deque[tuple[float, float]] = deque()  # (beat time, interval)
        self._rejected: deque[float] = deque()  # times of rejected beats/intervals
        self._recent: deque[float] = deque(maxlen=8)  # last raw intervals, the artefact reference
        self._outcomes: deque[bool] = deque(maxlen=6)  # recent beats: rejected as glitch or not
        self._lock = threading.Lock()

    def _median(self) -> float | None:
        return statistics.median(self._recent) if len(self._recent) >= 3 else None

    def add_beat(self, t: float) -> None:
        with self._lock:
            if self._last_beat is None or t - self._last_beat > self.window_s:
                self._last_beat = t
                return
            interval = t - self._last_beat
            median = self._median()
            if interval < self.min_interval or (median is not None and interval < 0.7 * median):
                self._rejected.append(t)  # glitch: keep the previous beat as reference
                self._outcomes.append(True)
                if sum(self._outcomes) >= 3:  # half the recent beats "glitches": the reference is wrong
                    self._recent.clear()
                    self._outcomes.clear()
                return
            self._outcomes.append(False)
            self._last_beat = t
            self._recent.append(interval)  # the reference follows real rate changes within a few beats
            if interval > self.max_interval or (median is not None and interval > 1.6 * median):
                self._rejected.append(t)  # missed beat(s): restart the interval chain here
                return
            if median is None:  # no reference yet: a spurious pulse cannot be told from a beat, so the first
                return  # intervals only build the reference (a rate from them could be double the true one)
            self._intervals.append((t, interval))

    def _prune(self, now: float) -> None:
        while self._intervals and self._intervals[0][0] < now - self.window_s:
            self._intervals.popleft()
        while self._rejected and self._rejected[0] < now - self.window_s:
            self._rejected.popleft()

    def rate(self, now: float) -> HeartRate:
        """Heart rate from the intervals that ended in the last `window_s` seconds."""
        with self._lock:
            self._prune(now)
            n = len(self._intervals)
            if n < 2 or (self._last_beat is not None and now - self._last_beat > self.max_interval * 1.5):
                return HeartRate(None, 0.0, n)
            # second pass, symmetric like HeartPy's: intervals over 30 % off the window's median are
            # artefacts the online check could not see yet (e.g. before it had a reference)
            median = statistics.median(iv for _, iv in self._intervals)
            kept = [iv for _, iv in self._intervals if abs(iv - median) <= 0.3 * median]
            if len(kept) < 2:
                return HeartRate(None, 0.0, len(kept))
            quality = len(kept) / (n + len(self._rejected))
            return HeartRate(60.0 / (sum(kept) / len(kept)), quality, len(kept))

    def reset(self) -> None:
        with self._lock:
            self._last_beat = None
            self._intervals.clear()
            self._rejected.clear()
            self._recent.clear()
            self._outcomes.clear()
