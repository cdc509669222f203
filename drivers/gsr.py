"""Grove GSR sensor: 12-bit reading -> skin resistance -> skin conductance (µS), with no-contact detection.

Seeed's formula for the 10-bit Arduino ADC is R = (1024 + 2x)·10000 / (C − x) Ω, where C is the reading
with no finger on the electrodes (trimmed to ~512 with the sensor's potentiometer). On the hat's 12-bit
ADC every term scales by four: R = (4096 + 2x)·10000 / (C − x), C ≈ 2048. No contact means R → ∞, i.e.
the reading sits at (or above) C.
"""
from __future__ import annotations

from dataclasses import dataclass

FULL_SCALE = 4095


@dataclass(frozen=True)
class GsrReading:
    raw: int
    contact: bool
    resistance_ohm: float | None
    conductance_us: float | None


class GsrSensor:
    """Converts raw readings with a configurable no-contact calibration point."""

    def __init__(self, no_contact_reading: int = 2048, contact_margin: int = 24):
        if not 0 < no_contact_reading <= FULL_SCALE:
            raise ValueError(f"no_contact_reading must be 1..{FULL_SCALE}, got {no_contact_reading}")
        self.no_contact_reading = no_contact_reading
        self.contact_margin = contact_margin

    def convert(self, raw: int) -> GsrReading:
        if not 0 <= raw <= FULL_SCALE:
            raise ValueError(f"GSR reading must be 0..{FULL_SCALE}, got {raw}")
        if raw >= self.no_contact_reading - self.contact_margin:
            return GsrReading(raw, False, None, None)
        resistance = (4096 + 2 * raw) * 10000 / (self.no_contact_reading - raw)
        return GsrReading(raw, True, resistance, 1e6 / resistance)

    def reading_for(self, conductance_us: float) -> float:
        """The (fractional) reading a given conductance produces: the inverse, used by the simulator."""
        resistance = 1e6 / conductance_us
        return (resistance * self.no_contact_reading / 10000 - 4096) / (2 + resistance / 10000)
