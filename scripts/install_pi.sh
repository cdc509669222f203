#!/usr/bin/env bash
# Install emotion-edge as a systemd service on a Raspberry Pi (64-bit Raspberry Pi OS bookworm), as root.
# Copies the project to /opt/emotion-edge, creates the 'emotion-edge' user (groups i2c, gpio, video),
# installs the apt packages the hardware needs (python3-lgpio for GPIO, python3-picamera2 for the camera
# module), builds the venv with the Pi extras on top of the system packages, installs the config and the
# unit, enables I2C and starts the service.
#
# Python packages: the venv sees the system's (--system-site-packages) and keeps the system numpy: it is
# pinned with a pip constraint, so pip picks the OpenCV and ml_dtypes releases that still accept numpy 1.x
# instead of installing numpy 2 over it (Raspberry Pi OS's simplejpeg, which picamera2 imports, is built
# for the system numpy and fails with "numpy.dtype size changed" under another one). picamera2 and lgpio
# come from apt only: pip would have to compile python-prctl and lgpio, and Lite has no compiler headers.
#
# EMOTION_EDGE_NO_SYSTEMD=1 skips raspi-config and systemctl (scripts/check_pi_rootfs.sh runs this script
# in an emulated root where no systemd is running).
set -euo pipefail
[ "$(id -u)" -eq 0 ] || { echo "run as root: sudo bash scripts/install_pi.sh" >&2; exit 1; }
src="$(cd "$(dirname "$0")/.." && pwd)"
dest=/opt/emotion-edge
no_systemd="${EMOTION_EDGE_NO_SYSTEMD:-0}"
warn() { echo "install_pi.sh: WARNING: $*" >&2; }

apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-pip i2c-tools python3-lgpio >/dev/null
if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-picamera2 >/dev/null; then
  warn "the apt package python3-picamera2 is not available here (it comes from Raspberry Pi OS's archive," \
       "archive.raspberrypi.com); camera.backend: picamera2 will not work. Use a USB camera" \
       "(camera.backend: opencv) or none, or add the Raspberry Pi archive and rerun."
fi
if [ "$no_systemd" != 1 ]; then
  command -v raspi-config >/dev/null && raspi-config nonint do_i2c 0 || echo "enable I2C yourself if needed"
fi
for g in i2c gpio video; do getent group "$g" >/dev/null || groupadd --system "$g"; done
id emotion-edge >/dev/null 2>&1 || useradd --system --home-dir /var/lib/emotion-edge --shell /usr/sbin/nologin \
  --user-group --groups i2c,gpio,video emotion-edge

mkdir -p "$dest"
tar -C "$src" --exclude=.venv --exclude=.git --exclude=build --exclude=var -cf - . | tar -C "$dest" -xf -
# --system-site-packages lets the venv see python3-picamera2 (libcamera bindings), python3-lgpio and numpy
[ -x "$dest/.venv/bin/python" ] || /usr/bin/python3 -m venv --system-site-packages "$dest/.venv"
constraints="$dest/.venv/system-constraints.txt"
: > "$constraints"
if sysnumpy="$(/usr/bin/python3 -c 'import numpy; print(numpy.__version__)' 2>/dev/null)"; then
  echo "numpy==$sysnumpy" > "$constraints"
  echo "keeping the system numpy $sysnumpy (pip constraint $constraints)"
fi
"$dest/.venv/bin/pip" install -q -c "$constraints" -e "$dest[pi]"

# what the hardware back ends need, checked in the venv the service runs
if ! "$dest/.venv/bin/python" -c "import lgpio" 2>/dev/null; then
  warn "lgpio does not import in the venv; gpio.pin_factory: lgpio (the button, heart.source: gpio) will stop" \
       "the service at start-up. Install python3-lgpio."
fi
if ! err="$("$dest/.venv/bin/python" -c "import picamera2" 2>&1)"; then
  warn "picamera2 does not import in the venv: $(echo "$err" | tail -1)"
fi

# config: root owns it, the service's group reads it (0640): the daemon can read but not rewrite it
install -d -m 0755 /etc/emotion-edge
[ -f /etc/emotion-edge/config.yaml ] || install -m 0640 "$src/config.yaml" /etc/emotion-edge/config.yaml
chown root:emotion-edge /etc/emotion-edge/config.yaml
chmod 0640 /etc/emotion-edge/config.yaml
install -m 0644 "$src/systemd/emotion-edge.service" /etc/systemd/system/emotion-edge.service
# checked as the service user, so an unreadable file fails here and not at start-up
runuser -u emotion-edge -- "$dest/.venv/bin/emotion-edge" check-config --config /etc/emotion-edge/config.yaml >/dev/null

if [ "$no_systemd" = 1 ]; then
  echo "installed; EMOTION_EDGE_NO_SYSTEMD=1: not starting the service"
  exit 0
fi
systemctl daemon-reload
systemctl enable --now emotion-edge.service
systemctl --no-pager status emotion-edge.service || true
echo "logs: journalctl -u emotion-edge -f"
