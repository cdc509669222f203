"""The detect button on gpiozero's mock pins: a simulated press lasts at least the debounce time."""
import time

import pytest
from gpiozero.pins.mock import MockFactory

from drivers.sim.button import HOLD_MARGIN_S, SimulatedButton


@pytest.mark.parametrize("bounce_s", [0.0, 0.05, 0.2])
def test_each_press_fires_once_and_holds_past_the_debounce_time(bounce_s):
    factory = MockFactory()
    pressed = []
    button = SimulatedButton(5, lambda: pressed.append(time.monotonic()), factory, bounce_s)
    pin = factory.pin(5)
    for _ in range(2):
        start = time.monotonic()
        button.press()
        held = time.monotonic() - start
        assert held >= bounce_s + HOLD_MARGIN_S * 0.9
        assert pin.state is False  # released
        time.sleep(bounce_s + 0.02)  # the next press comes after the debounce window
    deadline = time.monotonic() + 1
    while len(pressed) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(pressed) == 2
    button.close()
