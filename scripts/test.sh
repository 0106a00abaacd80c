#!/usr/bin/env bash
# Set up the environment (idempotent) and run the whole test suite, slow tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup-tools.sh  # checkov, for tests/deploy
bash scripts/setup-triton.sh  # a real tritonserver, for tests/serving
export MPLBACKEND=Agg
.venv/bin/python -m ruff check noisyad tests serving benchmarks
exec .venv/bin/python -m pytest -q "$@"
