#!/usr/bin/env bash
# Set up (Mosquitto, venv, package with the dev extras), then lint (ruff), type-check (mypy over pi/ and
# drivers/) and run the whole test suite; stops at the first step that fails. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh dev
echo ">> ruff check ."
.venv/bin/ruff check .
echo ">> mypy (pi/, drivers/)"
.venv/bin/mypy
echo ">> pytest"
exec .venv/bin/python -m pytest -q "$@"
