#!/usr/bin/env bash
# Prove the Pi install path in an emulated 64-bit Raspberry Pi OS (bookworm) root, by hand, not in CI.
#
#   sudo bash scripts/check_pi_rootfs.sh [ROOT_DIR]      (default /var/tmp/emotion-edge-pi-root)
#
# Needs root, network access to deb.debian.org and archive.raspberrypi.com, and on an x86 host the
# packages debootstrap, qemu-user-static and binfmt-support (arm64 binaries then run under qemu).
# What it does:
#   1. debootstrap a Debian bookworm arm64 root and add Raspberry Pi's archive (what 64-bit Raspberry Pi
#      OS is: Debian arm64 plus archive.raspberrypi.com, where python3-picamera2 and its libcamera live);
#   2. run scripts/install_pi.sh inside it with EMOTION_EDGE_NO_SYSTEMD=1 (no systemd runs in a chroot);
#   3. check what broke before: the venv imports numpy (still the system's), cv2, simplejpeg, picamera2,
#      lgpio, smbus2 and the TFLite runtime; the pi extra pulled no grove.py / RPi.GPIO / rpi_ws281x;
#      check-config passes as the service user; the shipped face model classifies five sample faces.
# A second run reuses the root (delete ROOT_DIR to start over). Exit status 0 means every check passed.
set -euo pipefail
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }
src="$(cd "$(dirname "$0")/.." && pwd)"
root="${1:-/var/tmp/emotion-edge-pi-root}"
suite=bookworm
for tool in debootstrap chroot; do command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }; done
if [ "$(uname -m)" != aarch64 ] && [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  echo "no qemu-aarch64 binfmt handler: apt-get install qemu-user-static binfmt-support" >&2
  exit 1
fi

mounted=()
cleanup() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[$i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
bind() { mount --bind "$1" "$root$1"; mounted+=("$root$1"); }

if [ ! -x "$root/usr/bin/python3" ]; then
  echo ">> debootstrap $suite arm64 into $root"
  debootstrap --arch=arm64 --variant=minbase --include=ca-certificates,curl,gnupg,python3 \
    "$suite" "$root" http://deb.debian.org/debian
fi
echo ">> Raspberry Pi archive"
if [ ! -f "$root/usr/share/keyrings/raspberrypi-archive-keyring.gpg" ]; then
  curl -fsSL http://archive.raspberrypi.com/debian/raspberrypi.gpg.key |
    gpg --dearmor > "$root/usr/share/keyrings/raspberrypi-archive-keyring.gpg"
fi
echo "deb [signed-by=/usr/share/keyrings/raspberrypi-archive-keyring.gpg] http://archive.raspberrypi.com/debian $suite main" \
  > "$root/etc/apt/sources.list.d/raspi.list"
cp /etc/resolv.conf "$root/etc/resolv.conf"
for d in /proc /sys /dev /dev/pts; do bind "$d"; done

echo ">> copy the project and run install_pi.sh in the emulated root"
rm -rf "$root/tmp/emotion-edge"
mkdir -p "$root/tmp/emotion-edge"
tar -C "$src" --exclude=.venv --exclude=.git --exclude=build --exclude=var -cf - . | tar -C "$root/tmp/emotion-edge" -xf -
chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root EMOTION_EDGE_NO_SYSTEMD=1 \
  bash /tmp/emotion-edge/scripts/install_pi.sh

echo ">> checks"
chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root bash -euo pipefail -c '
venv=/opt/emotion-edge/.venv/bin
sysnp=$(/usr/bin/python3 -c "import numpy; print(numpy.__version__)")
$venv/python - "$sysnp" <<"PY"
import importlib, sys
import numpy
assert numpy.__version__ == sys.argv[1], f"venv numpy {numpy.__version__} is not the system numpy {sys.argv[1]}"
for name in ("cv2", "simplejpeg", "picamera2", "lgpio", "smbus2", "ai_edge_litert", "gpiozero"):
    module = importlib.import_module(name)
    print(f"ok   {name:15} {getattr(module, \"__version__\", \"\")}")
for name in ("grove", "RPi", "rpi_ws281x", "prctl"):
    try:
        importlib.import_module(name)
    except ImportError:
        print(f"ok   {name:15} absent")
    else:
        raise SystemExit(f"{name} is installed: the pi extra must not pull it")
PY
runuser -u emotion-edge -- $venv/emotion-edge check-config --config /etc/emotion-edge/config.yaml >/dev/null
echo "ok   check-config as emotion-edge"
stat -c "ok   %n %a %U:%G" /etc/emotion-edge/config.yaml
sample=$($venv/python -c "from pi import resources; print(resources.shipped(resources.FACE_SAMPLE))")
$venv/emotion-edge fer-eval "$sample" --limit 5 --json >/dev/null
echo "ok   face model on 5 sample faces (TFLite, numpy $sysnp)"
'
echo "every check passed in $root"
