#!/usr/bin/env bash
# Install the servers that the production-shaped tests start themselves: PostgreSQL (a
# throwaway cluster per test session). SeaweedFS comes with the project's Python install.
# Idempotent: returns at once when the server binaries are present.
set -euo pipefail
if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    exit 0
fi
SUDO=""
[[ "$(id -u)" -ne 0 ]] && SUDO="sudo"
echo "setup-services: installing postgresql"
$SUDO apt-get install -y -qq postgresql >/dev/null \
    || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq postgresql >/dev/null; }
