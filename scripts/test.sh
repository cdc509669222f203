#!/usr/bin/env bash
# Set up (Mosquitto, venv, package with test extras) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh dev
exec .venv/bin/python -m pytest -q "$@"
