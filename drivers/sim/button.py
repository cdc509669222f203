"""The detect button on gpiozero's mock pins, with the test control a finger provides: `press()`."""
from __future__ import annotations

import time

from drivers.button import DetectButton

# a press held this much longer than the debounce time, so gpiozero's debounce never swallows it
HOLD_MARGIN_S = 0.01


class SimulatedButton(DetectButton):
    """A DetectButton whose pin factory is gpiozero's MockFactory."""

    def press(self) -> None:
        """Drive the mock pin high for at least the debounce time, then release, as a finger would."""
        mock_pin = self.button.pin
        mock_pin.drive_high()
        time.sleep((self.bounce_s or 0.0) + HOLD_MARGIN_S)
        mock_pin.drive_low()
