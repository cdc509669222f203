#!/usr/bin/env bash
# Install emotion-edge as a systemd service on a Raspberry Pi (64-bit Raspberry Pi OS), as root.
# Copies the project to /opt/emotion-edge, creates the 'emotion-edge' user (groups i2c, gpio, video),
# builds the venv with the Pi extras, installs the config and the unit, enables I2C, starts the service.
set -euo pipefail
[ "$(id -u)" -eq 0 ] || { echo "run as root: sudo bash scripts/install_pi.sh" >&2; exit 1; }
src="$(cd "$(dirname "$0")/.." && pwd)"
dest=/opt/emotion-edge
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv i2c-tools python3-picamera2 >/dev/null || \
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv i2c-tools >/dev/null
command -v raspi-config >/dev/null && raspi-config nonint do_i2c 0 || echo "enable I2C yourself if needed"
for g in i2c gpio video; do getent group "$g" >/dev/null || groupadd --system "$g"; done
id emotion-edge >/dev/null 2>&1 || useradd --system --home-dir /var/lib/emotion-edge --shell /usr/sbin/nologin \
  --groups i2c,gpio,video emotion-edge
mkdir -p "$dest"
tar -C "$src" --exclude=.venv --exclude=.git --exclude=build --exclude=var -cf - . | tar -C "$dest" -xf -
# --system-site-packages lets the venv see Raspberry Pi OS's python3-picamera2 (libcamera bindings)
[ -x "$dest/.venv/bin/python" ] || python3 -m venv --system-site-packages "$dest/.venv"
"$dest/.venv/bin/pip" install -q -e "$dest[pi]"
install -d -m 0755 /etc/emotion-edge
[ -f /etc/emotion-edge/config.yaml ] || install -m 0644 "$src/config.yaml" /etc/emotion-edge/config.yaml
install -m 0644 "$src/systemd/emotion-edge.service" /etc/systemd/system/emotion-edge.service
"$dest/.venv/bin/emotion-edge" check-config --config /etc/emotion-edge/config.yaml >/dev/null
systemctl daemon-reload
systemctl enable --now emotion-edge.service
systemctl --no-pager status emotion-edge.service || true
echo "logs: journalctl -u emotion-edge -f"
