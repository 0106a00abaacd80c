#!/usr/bin/env bash
# Set up the environment (idempotent) and run the whole test suite, slow tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MPLBACKEND=Agg
.venv/bin/python -m ruff check noisyad tests
exec .venv/bin/python -m pytest -q "$@"
