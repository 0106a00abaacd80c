#!/usr/bin/env bash
# Set up the environment (idempotent) and run the whole test suite, slow tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup-tools.sh  # checkov, for tests/deploy
bash scripts/setup-triton.sh  # a real tritonserver, for tests/serving
bash scripts/setup-bench.sh  # Fashion-MNIST, for tests/bench
bash scripts/setup-services.sh  # PostgreSQL, for tests/deploy/test_production_mlflow.py
export MPLBACKEND=Agg
.venv/bin/python -m ruff check .
exec .venv/bin/python -m pytest -q "$@"
