#!/usr/bin/env bash
# One GPU slot, start to checkpoints, on the device machine (run from the repo root by the `run` tool):
#   bash scripts/gpu_slot.sh [scripts/gpu_slot.py arguments, e.g. --arch hybrid --width 1.0 --seed 2031]
# Needs .slot/ carried (python scripts/slot_data.py prepare, here): fer2013.pack and site.tar.xz (Keras, namex,
# optree: their wheels unpacked and re-packed, extracted to /tmp/site as pip --target would).
# BUDGET_S (default 420) is gpu_slot.py's --budget-s; everything lands in $OUT (the tool brings it back):
# slot.log, run/best.keras, run/last.keras, run/history.csv, run/summary.json. Export happens back here.
set -uo pipefail
OUT="${OUT:-build/slot}"
BUDGET_S="${BUDGET_S:-420}"
mkdir -p "$OUT/run"
exec > >(tee "$OUT/slot.log") 2>&1
t0=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
python3 -c "import tarfile; tarfile.open('.slot/site.tar.xz').extractall('/tmp/site', filter='data')" \
  || { echo "unpacking the carried packages failed"; exit 3; }
export PYTHONPATH=/tmp/site KERAS_BACKEND=jax PYTHONUNBUFFERED=1
python3 -c "import keras, jax; print('keras', keras.__version__, 'jax', jax.__version__, jax.devices())" || exit 4
python3 scripts/slot_data.py unpack .slot/fer2013.pack /tmp/fer2013 || exit 5
echo "ready after $(( $(date +%s) - t0 )) s"
# SIGTERM at the budget plus a minute: gpu_slot.py then finishes its epoch and writes its checkpoints
timeout -k 20 $((BUDGET_S + 60)) python3 scripts/gpu_slot.py --train /tmp/fer2013/fer2013_training.npz \
  --val /tmp/fer2013/fer2013_publictest.npz --out "$OUT/run" --budget-s "$BUDGET_S" "$@"
rc=$?
echo "gpu_slot.py exit $rc after $(( $(date +%s) - t0 )) s"; ls -l "$OUT/run"
exit $rc
