"""One exception tree for the whole device: root -> subsystem -> leaf.

Callers catch `EmotionEdgeError` to handle anything the device raises on purpose; the CLI maps the
subsystem to an exit code. Degraded-but-working conditions are warnings (`DegradedWarning`), not errors.
"""
from __future__ import annotations

from drivers.errors import (
    CameraError,
    EmotionEdgeError,
    HardwareError,
    HatNotFoundError,
    I2CError,
    ImplausibleReadingError,
    PinFactoryError,
)

__all__ = ["EmotionEdgeError", "ConfigError", "HardwareError", "I2CError", "HatNotFoundError",
           "ImplausibleReadingError", "CameraError", "PinFactoryError", "ModelError", "RegistrarError",
           "CommandError", "PublishError", "DegradedWarning", "NoCameraWarning", "NoFaceModelWarning",
           "NoRegistrarWarning", "SlowKernelsWarning", "EmptySceneWarning", "NoPriorWarning"]


class ConfigError(EmotionEdgeError, ValueError):
    """The configuration is invalid; `problems` maps each dotted key to what is wrong with it."""

    def __init__(self, problems: dict[str, str]):
        self.problems = dict(problems)
        lines = "\n".join(f"  {key}: {why}" for key, why in sorted(self.problems.items()))
        super().__init__(f"invalid configuration ({len(self.problems)} problem(s)):\n{lines}")


class ModelError(EmotionEdgeError):
    """A shipped model is missing, unreadable or does not match its metadata."""


class RegistrarError(ModelError):
    """The face registrar (face.align learned) is missing, unreadable or does not match its metadata; the
    device then cuts faces by the Haar box alone, so it is told apart from the expression model's faults."""


class CommandError(EmotionEdgeError, ValueError):
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


class NoCameraWarning(DegradedWarning):
    """No camera could be opened: detections use physiology alone."""


class NoFaceModelWarning(DegradedWarning):
    """The face model is missing or unloadable: detections use physiology alone."""


class NoRegistrarWarning(DegradedWarning):
    """The face registrar is missing or unloadable: faces are cut by the Haar box in FER2013's framing."""


class SlowKernelsWarning(DegradedWarning):
    """The TFLite delegate refused the graph: the model runs on the slower built-in kernels."""


class EmptySceneWarning(DegradedWarning):
    """The simulated camera's face source is missing: it shows a scene without a face."""


class NoPriorWarning(DegradedWarning):
    """The shipped population prior is unreadable: personal models are fitted on the wearer's data alone."""
