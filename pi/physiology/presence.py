"""Is a sensor plugged in? An unplugged Grove input floats (the hat's MCU has no pulls on its ADC pins), so
it reads noise rather than 0, and noise looks like skin contact on the GSR channel and like beats on the
heart channel. These checks run on each second's samples and say "not connected" instead.

- GSR: the module's output is an op-amp stage that follows skin conductance, which changes over seconds;
  consecutive 50 Hz samples differ by a few counts. A floating pin jumps by tens to hundreds of counts
  from one sample to the next. The median step over the second decides.
- Ear clip through the ADC: its output is a digital line that sits at a rail and switches in microseconds,
  so samples almost never land in the middle of the range. A floating pin spends much of its time there,
  and crosses the threshold far more often than any heart beats.
A steady low line with no edges is what a connected clip gives with no pulse under it, so it stays
`no_heart_rate`, not "not connected". A floating pin that happens to sit still at one level cannot be told
from a sensor that reads that level; the checks catch the noisy case, which is the common one.
"""
from __future__ import annotations

import statistics


class GsrPresence:
    """Per-second verdict on the GSR channel from the size of its sample-to-sample steps."""

    def __init__(self, max_median_step: float = 40.0, min_samples: int = 5):
        self.max_median_step = max_median_step
        self.min_samples = min_samples
        self._prev: int | None = None
        self._steps: list[int] = []

    def feed(self, raw: int) -> None:
        """Add one raw 12-bit reading."""
        if self._prev is not None:
            self._steps.append(abs(raw - self._prev))
        self._prev = raw

    def verdict(self) -> bool | None:
        """True (a sensor), False (noise: not connected) or None (too few samples); starts a new second."""
        steps, self._steps = self._steps, []
        if len(steps) + 1 < self.min_samples:
            return None
        return statistics.median(steps) <= self.max_median_step


class PulseLinePresence:
    """Per-second verdict on the ear clip's digital line sampled through the ADC.

    `threshold_mv` is the edge detector's threshold; a sample within `mid_band` x supply of it is "in the
    middle". More than `max_mid_fraction` of the samples there, or more than `max_edges` rising edges in a
    second (twice the fastest plausible heart rate, plus one), means the line floats.
    """

    def __init__(self, threshold_mv: float, supply_mv: float, max_bpm: float, mid_band: float = 0.25,
                 max_mid_fraction: float = 0.1, min_samples: int = 20):
        self.low = threshold_mv - mid_band * supply_mv
        self.high = threshold_mv + mid_band * supply_mv
        self.max_mid_fraction = max_mid_fraction
        self.max_edges = int(2 * max_bpm / 60.0) + 1
        self.min_samples = min_samples
        self._n = self._mid = self._edges = 0

    def feed(self, mv: float, edge: bool) -> None:
        """Add one sample and whether it completed a rising edge."""
        self._n += 1
        if self.low < mv < self.high:
            self._mid += 1
        if edge:
            self._edges += 1

    def verdict(self) -> bool | None:
        """True (a digital line), False (floating: not connected) or None (too few samples)."""
        n, mid, edges = self._n, self._mid, self._edges
        self._n = self._mid = self._edges = 0
        if n < self.min_samples:
            return None
        return mid / n <= self.max_mid_fraction and edges <= self.max_edges
