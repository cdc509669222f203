"""Steady clocks. Everything that samples or waits asks a clock, so simulation can run faster than real time.

`monotonic()` is in the clock's own seconds; `wall()` is the matching UTC wall time (epoch seconds) for
timestamps. `SimClock(speed=20)` makes 20 simulated seconds pass per real second.
"""
from __future__ import annotations

import threading
import time


class Clock:
    """Real time."""

    speed = 1.0

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def wait(self, seconds: float, stop: threading.Event | None = None) -> bool:
        """Sleep `seconds` of clock time; return True early if `stop` gets set."""
        if seconds <= 0:
            return bool(stop and stop.is_set())
        if stop is None:
            time.sleep(seconds / self.speed)
            return False
        return stop.wait(seconds / self.speed)


class SimClock(Clock):
    """Clock time runs `speed` times faster than real time, from the moment it is created."""

    def __init__(self, speed: float = 1.0):
        if speed <= 0:
            raise ValueError(f"clock speed must be positive, got {speed}")
        self.speed = speed
        self._real0 = time.monotonic()
        self._wall0 = time.time()

    def monotonic(self) -> float:
        return (time.monotonic() - self._real0) * self.speed

    def wall(self) -> float:
        return self._wall0 + self.monotonic()


class ManualClock(Clock):
    """Time moves only when told (`t` is settable): offline simulation and deterministic tests."""

    def __init__(self, t: float = 0.0, wall0: float = 1_790_000_000.0):
        self.t = t
        self.wall0 = wall0

    def monotonic(self) -> float:
        return self.t

    def wall(self) -> float:
        return self.wall0 + self.t

    def wait(self, seconds: float, stop: threading.Event | None = None) -> bool:
        self.t += max(0.0, seconds)
        return bool(stop and stop.is_set())
