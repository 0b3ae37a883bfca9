#!/usr/bin/env bash
# Create .venv with the pinned dependencies (requirements.lock) and lift3d itself.
# Idempotent: re-runs only when the lock file or pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${LIFT3D_VENV:-.venv}
PYTHON=${PYTHON:-python3}
stamp="$VENV/.lift3d-installed"
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
# torch first, alone: the pinned version resolves to the CPU build where a local wheel is offered.
"${pip[@]}" install "$(grep -E '^torch==' requirements.lock)"
"${pip[@]}" install -r requirements.lock
"${pip[@]}" install --no-deps --no-build-isolation -e .
echo "$want" > "$stamp"
