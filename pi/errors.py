"""One exception tree for the whole device: root -> subsystem -> leaf.

Callers catch `EmotionEdgeError` to handle anything the device raises on purpose; the CLI maps the
subsystem to an exit code. Degraded-but-working conditions are warnings (`DegradedWarning`), not errors.
"""
from __future__ import annotations


class EmotionEdgeError(Exception):
    """Root of every error the device raises deliberately."""


class ConfigError(EmotionEdgeError):
    """The configuration is invalid; `problems` maps each dotted key to what is wrong with it."""

    def __init__(self, problems: dict[str, str]):
        self.problems = dict(problems)
        lines = "\n".join(f"  {key}: {why}" for key, why in sorted(self.problems.items()))
        super().__init__(f"invalid configuration ({len(self.problems)} problem(s)):\n{lines}")


class HardwareError(EmotionEdgeError):
    """A sensor, camera or pin could not be used."""


class I2CError(HardwareError):
    """An I2C transfer to the Grove Base Hat failed."""


class HatNotFoundError(I2CError):
    """No Grove Base Hat answered at the probed addresses."""


class CameraError(HardwareError):
    """The camera could not be opened or stopped delivering frames."""


class ModelError(EmotionEdgeError):
    """A shipped model is missing, unreadable or does not match its metadata."""


class CommandError(EmotionEdgeError):
    """An MQTT or CLI command is malformed; the message says which field and why."""


class PublishError(EmotionEdgeError):
    """A message could not be handed to the MQTT broker."""


class ImportDataError(EmotionEdgeError, ValueError):
    """A file given to an importer is unusable; the message names the file and the record. Nothing of the
    file is imported (the CLI exits 2, as for any bad input)."""


class MissingExtraError(EmotionEdgeError):
    """An optional feature needs packages that are not installed; the message names the pip extra."""


class DegradedWarning(UserWarning):
    """Something is missing or failing, but the device keeps working with less (e.g. no camera)."""
