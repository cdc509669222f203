"""The GPIO back end (gpiozero pin factory), chosen explicitly so that a missing one fails at start-up.

Left to itself gpiozero tries lgpio, RPi.GPIO, pigpio and its native driver in turn and falls back with
only a warning, so a Pi without python3-lgpio would start and then lose the button (or the ear clip on
heart.source gpio) to a back end that cannot see it. Here the configured name is loaded through gpiozero's
own registry (the `gpiozero_pin_factories` entry points that GPIOZERO_PIN_FACTORY uses) and constructed;
any failure becomes a PinFactoryError naming the apt package to install.

lgpio creates its notification FIFO in the working directory, or in $LG_WD when set; the systemd unit gives
the service a writable RuntimeDirectory and points LG_WD at it (ProtectSystem=strict leaves the working
directory read-only).
"""
from __future__ import annotations

import sys
from typing import Any, Protocol

from drivers.errors import PinFactoryError


class PinFactoryLike(Protocol):
    """A gpiozero pin factory (lgpio, mock, ...): gpiozero's Factory has no typed interface of its own."""

    def close(self) -> None: ...


# what to install on Raspberry Pi OS (bookworm) for each back end
APT_PACKAGES = {
    "lgpio": "python3-lgpio",
    "rpigpio": "python3-rpi.gpio",
    "pigpio": "python3-pigpio (and run the pigpiod daemon)",
    "native": None,
    "mock": None,
}


def _entry_point(name: str) -> Any:
    if sys.version_info >= (3, 10):
        from importlib.metadata import entry_points

        group = entry_points(group="gpiozero_pin_factories")
    else:  # pragma: no cover - Python 3.9
        from importlib.metadata import entry_points

        group = entry_points().get("gpiozero_pin_factories", ())
    for ep in group:
        if ep.name == name:
            return ep
    return None


def make_pin_factory(name: str) -> Any:
    """Construct gpiozero's pin factory `name` (lgpio, rpigpio, pigpio, native, mock).

    Raises PinFactoryError when gpiozero does not know the name, its back end does not import, or it cannot
    open the GPIO chip; the message says what to install.
    """
    if name not in APT_PACKAGES:
        raise PinFactoryError(f"unknown GPIO pin factory {name!r} (known: {', '.join(APT_PACKAGES)})")
    package = APT_PACKAGES[name]
    hint = f"; install it with: sudo apt install {package}" if package else ""
    ep = _entry_point(name)
    if ep is None:
        raise PinFactoryError(f"gpiozero has no pin factory {name!r}: is gpiozero >= 2.0 installed?")
    try:
        factory_class = ep.load()
    except ImportError as exc:
        raise PinFactoryError(f"GPIO back end {name!r} is not installed ({exc}){hint}; "
                              "the venv must see system packages (python3 -m venv --system-site-packages)") \
            from None
    try:
        return factory_class()
    except Exception as exc:  # each back end raises its own (lgpio.error, RuntimeError, OSError, ...)
        raise PinFactoryError(f"GPIO back end {name!r} failed to start: {type(exc).__name__}: {exc} (is this a "
                              "Raspberry Pi, is the user in the 'gpio' group, and is LG_WD writable?)") from None
