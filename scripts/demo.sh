#!/usr/bin/env bash
# Set up, then run the daemon's main job on simulated hardware against a real local Mosquitto:
# the simulated wearer presses the button every 10 s (a detection each time), a collect session is asked
# for over MQTT, and every message the device publishes is printed as it arrives. The dashboard is served
# on http://127.0.0.1:8080/ (or a free port if 8080 is taken); open it in a browser while the demo runs.
# Usage: bash scripts/demo.sh [SECONDS] [EMOTION]     (defaults: 45 happy)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-45}"
emotion="${2:-happy}"
bash scripts/setup_env.sh dev >/dev/null
port=$(.venv/bin/python -m pi.loopback)
webport=8080  # the dashboard's default port, or a free one when something else holds it
if ! .venv/bin/python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 8080))" 2>/dev/null; then
  webport=$(.venv/bin/python -m pi.loopback)
fi
conf=$(mktemp)
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$port" > "$conf"
mosquitto_bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)
"$mosquitto_bin" -c "$conf" >/dev/null 2>&1 &
broker=$!
sleep 0.5
mosquitto_sub -h 127.0.0.1 -p "$port" -t 'iotsensors/#' -v &
sub=$!
trap 'kill $sub $broker 2>/dev/null; rm -f "$conf"' EXIT
echo ">> Mosquitto on 127.0.0.1:$port; emotion-edge run --simulate for $seconds s (sim.emotion=$emotion)"
echo ">> dashboard: http://127.0.0.1:$webport/"
(sleep 3; mosquitto_pub -h 127.0.0.1 -p "$port" -q 1 -t iotsensors/emotion-pi-01/command \
   -m '{"command": "collect", "label": "'"$emotion"'", "duration_s": 5}' 2>/dev/null || true) &
.venv/bin/emotion-edge run --simulate --max-seconds "$seconds" --set mqtt.port="$port" \
  --set sim.emotion="$emotion" --set sim.button_every_s=10 --set log.format=text --set web.port="$webport" \
  --set device.data_dir="${EMOTION_EDGE_DATA:-$PWD/var}"
