"""The Pi install path as far as it can be checked off the Pi (scripts/check_pi_rootfs.sh runs it for real in an
emulated Raspberry Pi OS root): what the `pi` extra asks pip for, and what install_pi.sh does instead."""
import re
import subprocess

import pytest
from conftest import ROOT

tomllib = pytest.importorskip("tomllib")

SCRIPT = (ROOT / "scripts" / "install_pi.sh").read_text()


def pi_extra() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["optional-dependencies"]["pi"]


def test_pi_extra_asks_pip_for_nothing_that_compiles_on_raspberry_pi_os_lite():
    names = {re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].lower() for req in pi_extra()}
    # grove.py drags RPi.GPIO and rpi_ws281x (C builds); picamera2 drags python-prctl (libcap headers);
    # lgpio would build from source: these come from apt, or not at all
    assert not names & {"grove.py", "rpi.gpio", "rpi-ws281x", "picamera2", "python-prctl", "lgpio"}
    assert "smbus2" in names


def test_install_script_takes_the_hardware_packages_from_apt_and_keeps_the_system_numpy():
    assert "python3-lgpio" in SCRIPT and "python3-picamera2" in SCRIPT
    assert "--system-site-packages" in SCRIPT
    assert 'echo "numpy==$sysnumpy" > "$constraints"' in SCRIPT and '-c "$constraints"' in SCRIPT
    assert "grove" not in SCRIPT.replace("grove.py", "")  # nothing installs Seeed's library


def test_install_script_says_when_python3_picamera2_is_missing():
    assert re.search(r"if ! .*apt-get install .*python3-picamera2.*then\n\s+warn \"the apt package python3-picamera2 "
                     r"is not available", SCRIPT)


def test_config_is_readable_by_the_service_group_only():
    assert "chown root:emotion-edge /etc/emotion-edge/config.yaml" in SCRIPT
    assert "chmod 0640 /etc/emotion-edge/config.yaml" in SCRIPT
    assert "runuser -u emotion-edge --" in SCRIPT  # check-config runs as the daemon's user


@pytest.mark.parametrize("script", ["install_pi.sh", "check_pi_rootfs.sh", "setup_env.sh"])
def test_scripts_parse(script):
    result = subprocess.run(["bash", "-n", str(ROOT / "scripts" / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
