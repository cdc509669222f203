"""Beats from the Grove ear clip's pulse line sampled through the hat's ADC: one digital pulse per heartbeat.

A rising edge found with hysteresis is a beat; its time is interpolated between the two samples that
straddle the threshold, so the beat time is finer than the sampling period.
"""
from __future__ import annotations


class PulseEdgeDetector:
    """Rising-edge detector with hysteresis on a sampled voltage."""

    def __init__(self, threshold_mv: float = 1650.0, hysteresis_mv: float = 200.0):
        self.high = threshold_mv + hysteresis_mv / 2
        self.low = threshold_mv - hysteresis_mv / 2
        self.threshold = threshold_mv
        self._state_high = False
        self._prev: tuple[float, float] | None = None

    def feed(self, t: float, mv: float) -> float | None:
        """Add one sample; return the interpolated time of a rising edge, if this sample completes one."""
        edge = None
        if not self._state_high and mv >= self.high:
            self._state_high = True
            edge = t
            if self._prev is not None and self._prev[1] < mv:
                t0, v0 = self._prev
                frac = (self.threshold - v0) / (mv - v0)
                edge = t0 + min(max(frac, 0.0), 1.0) * (t - t0)
        elif self._state_high and mv <= self.low:
            self._state_high = False
        self._prev = (t, mv)
        return edge

    def reset(self) -> None:
        self._state_high = False
        self._prev = None
