"""The GPIO back end is chosen explicitly: a missing one stops start-up, naming the package to install."""
import subprocess
import sys

import pytest
from conftest import ROOT
from gpiozero.pins.mock import MockFactory

from drivers.pins import make_pin_factory
from drivers.sim.bus import SimulatedSMBus
from pi.errors import HardwareError, PinFactoryError
from pi.service import config
from pi.service.hardware import build


@pytest.fixture
def no_lgpio(monkeypatch):
    """Make `import lgpio` fail here, as on a Pi without python3-lgpio, whatever this machine has."""
    monkeypatch.setitem(sys.modules, "lgpio", None)
    monkeypatch.delitem(sys.modules, "gpiozero.pins.lgpio", raising=False)


def test_a_back_end_that_cannot_be_imported_fails_with_the_package_to_install(no_lgpio):
    with pytest.raises(PinFactoryError, match=r"'lgpio' is not installed.*sudo apt install python3-lgpio") as info:
        make_pin_factory("lgpio")
    assert isinstance(info.value, HardwareError)


def test_unknown_factory_name_is_refused():
    with pytest.raises(PinFactoryError, match="unknown GPIO pin factory 'gpiod'"):
        make_pin_factory("gpiod")


def test_mock_factory_is_built_through_gpiozeros_registry():
    factory = make_pin_factory("mock")
    assert isinstance(factory, MockFactory)
    factory.close()


def real_cfg(*overrides):
    return config.load(None, ["camera.backend=none", *overrides])


def test_start_up_on_real_hardware_fails_before_the_bus_is_touched(no_lgpio):
    bus = SimulatedSMBus()
    with pytest.raises(PinFactoryError, match="python3-lgpio"):
        build(real_cfg(), simulate=False, bus=bus)  # the button is enabled by default
    assert not bus.transactions
    with pytest.raises(PinFactoryError, match="python3-lgpio"):
        build(real_cfg("button.enabled=false", "heart.source=gpio"), simulate=False, bus=SimulatedSMBus())


def test_no_gpio_in_use_needs_no_back_end(no_lgpio):
    bus = SimulatedSMBus()
    bus.connect(0, lambda t: 1000.0)
    hw = build(real_cfg("button.enabled=false"), simulate=False, bus=bus)
    assert hw.pin_factory is None
    hw.close()


def test_configured_factory_is_used_and_closed_with_the_hardware():
    hw = build(real_cfg("gpio.pin_factory=mock"), simulate=False, bus=SimulatedSMBus())
    assert isinstance(hw.pin_factory, MockFactory) and hw.owns_pin_factory
    hw.close()


def test_simulation_uses_mock_pins_whatever_is_configured(no_lgpio):
    hw = build(config.load(None, ["gpio.pin_factory=lgpio"]), simulate=True)
    assert isinstance(hw.pin_factory, MockFactory)
    hw.close()


def test_cli_exits_3_with_the_hint(tmp_path):
    fake = tmp_path / "site"
    fake.mkdir()
    (fake / "lgpio.py").write_text("raise ImportError(\"No module named 'lgpio'\")\n")
    result = subprocess.run([sys.executable, "-m", "pi", "run", "--set", f"device.data_dir={tmp_path / 'data'}",
                             "--set", "camera.backend=none", "--set", "log.format=text"], cwd=ROOT,
                            env={"PYTHONPATH": str(fake), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 3, result.stderr
    assert "sudo apt install python3-lgpio" in result.stderr
