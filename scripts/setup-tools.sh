#!/usr/bin/env bash
# Create or update .venv-tools: deployment checkers that cannot share .venv's pins.
#
# checkov pulls its own versions of boto3, jsonschema, networkx and friends, which clash with
# what mlflow and kfp need in .venv, so it lives in a venv of its own. The deployment tests
# (tests/deploy/) run .venv-tools/bin/checkov; they fail with a pointer here if it is missing.
#
# Idempotent: a second run with an unchanged script returns at once (stamp file).
set -euo pipefail
cd "$(dirname "$0")/.."

CHECKOV_VERSION="3.3.30"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV="${NOISYAD_TOOLS_VENV:-.venv-tools}"
STAMP="$VENV/.noisyad-tools-installed"
WANT="$(sha256sum scripts/setup-tools.sh | cut -c1-16)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$VENV/bin/checkov" ]]; then
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "setup-tools: creating $VENV with $("$PYTHON" --version)"
    "$PYTHON" -m venv "$VENV"
fi
pip_install() {
    "$VENV/bin/python" -m pip --disable-pip-version-check -q install "$@" 2>&1 \
        | sed '/WARNING: Location .* is ignored/d'
}
pip_install --upgrade "pip>=24"
echo "setup-tools: installing checkov==$CHECKOV_VERSION (first time: a minute or two)"
if ! pip_install "checkov==$CHECKOV_VERSION" || ! "$VENV/bin/checkov" --version >/dev/null; then
    echo "setup-tools: could not install checkov==$CHECKOV_VERSION into $VENV (see above);" \
        "the deployment tests (tests/deploy) need it." >&2
    exit 1
fi
echo "$WANT" > "$STAMP"
echo "setup-tools: done ($VENV)"
