"""The 'detect my emotion' push button on a GPIO pin (Grove button: pressed pulls the line high).

The pin factory is passed in: gpiozero's real factory on a Pi, its MockFactory in simulation and tests
(drivers.sim.button adds `press()`, which drives the mock pin as a finger would).
"""
from __future__ import annotations

from typing import Any, Callable, Protocol


class ButtonLike(Protocol):
    """What the daemon needs of a button once it is wired: to let go of its pin."""

    def close(self) -> None: ...


class DetectButton:
    def __init__(self, pin: int, on_press: Callable[[], None], pin_factory: Any = None,
                 bounce_s: float = 0.05) -> None:
        from gpiozero import Button

        # The Grove button module drives its signal high when pressed, so no pull-up: active-high input.
        self.button = Button(pin, pull_up=False, bounce_time=bounce_s or None, pin_factory=pin_factory)
        self.button.when_pressed = lambda: on_press()
        self.pin = pin
        self.bounce_s = bounce_s

    def close(self) -> None:
        self.button.close()
