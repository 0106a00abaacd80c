#!/usr/bin/env bash
# Create or update .venv-triton: a real Triton Inference Server for the serving tests.
#
# The nvidia-pytriton wheel bundles a real `tritonserver` binary with the python backend
# only. It needs numpy<2, which the main .venv cannot have, so it lives in its own venv.
# The python-backend model in serving/triton_python/ runs ONNX Runtime inside that server,
# hence an onnxruntime build that still supports numpy 1.x.
#
# Idempotent: a second run with this script unchanged returns at once (stamp file).
# Set NOISYAD_SKIP_TRITON=1 to skip it; the real-Triton test then skips with that reason.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${NOISYAD_SKIP_TRITON:-0}" == "1" ]]; then
    echo "setup-triton: skipped (NOISYAD_SKIP_TRITON=1)"
    exit 0
fi

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV="${NOISYAD_TRITON_VENV:-.venv-triton}"
STAMP="$VENV/.noisyad-triton-installed"
WANT="$(sha256sum scripts/setup-triton.sh | cut -c1-16)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "setup-triton: creating $VENV with $("$PYTHON" --version)"
    "$PYTHON" -m venv "$VENV"
fi
pip_install() {
    "$VENV/bin/python" -m pip --disable-pip-version-check -q install "$@" 2>&1 \
        | sed '/WARNING: Location .* is ignored/d'
}
echo "setup-triton: installing nvidia-pytriton, numpy<2, onnxruntime (first time: a minute)"
pip_install --upgrade "pip>=24"
pip_install "nvidia-pytriton==0.7.0" "numpy>=1.26,<2" "onnxruntime>=1.20,<1.24"
echo "$WANT" > "$STAMP"
echo "setup-triton: done ($VENV)"
