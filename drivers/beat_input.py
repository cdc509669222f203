"""The Grove ear clip wired to a GPIO pin (`heart.source: gpio`): each rising edge is one heartbeat.

The module drives its output high for a short pulse per beat; gpiozero timestamps the edge in its
callback thread, on the clock the caller passes, so no pulse is lost between ADC samples.
"""
from __future__ import annotations

from typing import Callable, Protocol


class BeatInputLike(Protocol):
    """A source of beat edges that calls back on its own; the device only has to close it."""

    def close(self) -> None: ...


class GpioBeatInput:
    """Ear clip wired to a GPIO pin: each rising edge is a beat, timestamped on the given clock."""

    def __init__(self, pin: int, on_beat: Callable[[float], None], clock, pin_factory=None):
        from gpiozero import DigitalInputDevice  # imported here: gpiozero is only needed on a Pi

        self._clock = clock
        self._on_beat = on_beat
        self.device = DigitalInputDevice(pin, pull_up=False, pin_factory=pin_factory)
        self.device.when_activated = lambda: self._on_beat(self._clock.monotonic())

    def close(self) -> None:
        self.device.close()
