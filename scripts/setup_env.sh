#!/usr/bin/env bash
# Install what the project needs on Debian / Raspberry Pi OS: Mosquitto, Python venv, the package.
# Usage: bash scripts/setup_env.sh [EXTRAS]   (EXTRAS e.g. "dev" or "pi,aws"); runs as root or with sudo.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "run as root or install sudo" >&2; exit 1; }
  SUDO="sudo"
fi
need=""
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need="$need mosquitto"
command -v mosquitto_sub >/dev/null 2>&1 || need="$need mosquitto-clients"
python3 -c "import venv, ensurepip" >/dev/null 2>&1 || need="$need python3-venv"
command -v openssl >/dev/null 2>&1 || need="$need openssl"
# tests/test_systemd.py checks the unit with systemd-analyze (verify, security --offline)
command -v systemd-analyze >/dev/null 2>&1 || need="$need systemd"
case ",$extras," in  # the dashboard's browser tests drive Debian's Chromium (not on a Pi's runtime install)
  *,dev,*|*,test,*)
    command -v chromium >/dev/null 2>&1 || need="$need chromium"
    command -v chromedriver >/dev/null 2>&1 || need="$need chromium-driver" ;;
esac
if [ -n "$need" ]; then
  echo ">> apt-get install$need"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $need >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
echo ">> pip install -e .[$extras]"
.venv/bin/python -m pip install -q -e ".[$extras]" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import pi, cv2, paho.mqtt, yaml, numpy" 
