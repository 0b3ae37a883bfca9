#!/usr/bin/env bash
# Create .venv with the pinned dependencies (requirements.lock) and lift3d itself, and
# install the demo page's viewer from npm (server/demo/package-lock.json) where npm exists.
# Idempotent: each part re-runs only when its lock file changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${LIFT3D_VENV:-.venv}
PYTHON=${PYTHON:-python3}

python_env() {
  local stamp="$VENV/.lift3d-installed" want
  want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return
  fi
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  local pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
  # torch first, alone: the pinned version resolves to the CPU build where a local wheel is offered.
  "${pip[@]}" install "$(grep -E '^torch==' requirements.lock)"
  "${pip[@]}" install -r requirements.lock
  "${pip[@]}" install --no-deps --no-build-isolation -e .
  # rembg imports pymatting, whose numba kernels compile on first import (one to two minutes)
  # and cache into site-packages: pay that here, once, not at the server's first start.
  "$VENV/bin/python" -c "import rembg.bg"
  echo "$want" > "$stamp"
}

demo_viewer() {
  local folder=server/demo stamp=server/demo/node_modules/.lift3d-installed want
  if ! command -v npm >/dev/null 2>&1; then
    echo "bootstrap: npm not found; the demo page at /demo runs without its 3D viewer" >&2
    return
  fi
  want=$(sha256sum "$folder/package-lock.json" | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return
  fi
  (cd "$folder" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" > "$stamp"
}

python_env
demo_viewer
