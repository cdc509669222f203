"""The bottom of the device's exception tree, so drivers need nothing from the layers above them.

    EmotionEdgeError                 root of every error the device raises on purpose (pi.errors re-exports it)
    +-- HardwareError                a sensor, camera or pin could not be used
        +-- I2CError (OSError)       a transfer to the Grove Base Hat failed
        |   +-- HatNotFoundError     no hat answered at the probed addresses
        |   +-- ImplausibleReadingError (ValueError)  the bus answered with a value the hat cannot produce
        +-- CameraError (OSError)    the camera could not be opened or stopped delivering frames
        +-- PinFactoryError          no usable GPIO back end

Leaves also inherit the builtin a caller would naturally catch (a bus fault is an OSError).
"""
from __future__ import annotations


class EmotionEdgeError(Exception):
    """Root of every error the device raises deliberately."""


class HardwareError(EmotionEdgeError):
    """A sensor, camera or pin could not be used."""


class I2CError(HardwareError, OSError):
    """An I2C transfer to the Grove Base Hat failed."""


class HatNotFoundError(I2CError):
    """No Grove Base Hat answered at the probed addresses."""


class ImplausibleReadingError(I2CError, ValueError):
    """The bus returned a value the hat cannot produce (a corrupt transfer, not a reading)."""


class CameraError(HardwareError, OSError):
    """The camera could not be opened or stopped delivering frames."""


class PinFactoryError(HardwareError):
    """The configured GPIO back end (pin factory) is not available."""
