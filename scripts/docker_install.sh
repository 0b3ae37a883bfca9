#!/usr/bin/env bash
# Every install step of Dockerfile.cuda, one phase per RUN instruction, so that the
# tests can run the very same commands outside Docker (tests/test_dockerfile.py).
#
#   system   runtime stage, as root: tini, the non-root user, the /workspace folders
#   python   builder: the interpreter uv manages (UV_PYTHON, UV_PYTHON_INSTALL_DIR)
#   deps     builder: the locked dependencies without the project (the cached layer)
#   project  builder: the project itself, bytecode compiled, then an import smoke test
#   weights  builder: `lift3d weights pull --profile $PROFILE` when PROFILE is set
#   viewer   node stage: the demo page's 3D viewer from npm, exactly as server/demo/package-lock.json pins it
#
# Switches for tests (never set in the Dockerfile):
#   DOCKER_INSTALL_DRY_RUN=1   print the commands of a phase instead of running them
#   LIFT3D_LOCAL_TORCH=DIR     keep uv's locked CUDA torch (and its nvidia/triton wheels)
#                              out, and install the CPU torch wheel found in DIR instead
set -euo pipefail

phase=${1:?usage: docker_install.sh system|python|deps|project|weights|viewer}
cd "$(dirname "$0")/.."

run() {
  if [ "${DOCKER_INSTALL_DRY_RUN:-}" = 1 ]; then
    printf '+ %s\n' "$*"
  else
    "$@"
  fi
}

venv=${UV_PROJECT_ENVIRONMENT:-.venv}
sync_flags=(--locked --no-dev --extra s3 --extra runpod --compile-bytecode)
if [ -n "${LIFT3D_LOCAL_TORCH:-}" ]; then
  # The GPU build of torch pulls several GB of CUDA wheels; the test installs the local CPU wheel.
  while read -r name; do
    sync_flags+=(--no-install-package "$name")
  done < <(sed -n 's/^name = "\(torch\|triton\|nvidia-[^"]*\|cuda-[^"]*\)"$/\1/p' uv.lock)
  sync_flags+=(--inexact)
fi

case "$phase" in
  system)
    run apt-get update
    run apt-get install -y --no-install-recommends tini ca-certificates libgomp1
    run rm -rf /var/lib/apt/lists/*
    run useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin lift3d
    run mkdir -p /workspace/lift3d/weights
    run chown -R lift3d:lift3d /workspace/lift3d
    ;;
  python)
    run uv python install "${UV_PYTHON:?set UV_PYTHON, e.g. 3.11}"
    ;;
  deps)
    run uv sync "${sync_flags[@]}" --no-install-project
    ;;
  project)
    run uv sync "${sync_flags[@]}"
    if [ -n "${LIFT3D_LOCAL_TORCH:-}" ]; then
      run uv pip install --python "$venv/bin/python" --no-deps --no-index --find-links "$LIFT3D_LOCAL_TORCH" "torch==2.13.0"
    fi
    if [ -z "${LIFT3D_LOCAL_TORCH:-}" ]; then
      # The CUDA image: onnxruntime-gpu (the same module, plus CUDAExecutionProvider) in place of
      # the CPU build, pinned by version and hash in its own file; the background session falls
      # back to the CPU when the provider cannot load.
      run uv pip uninstall --python "$venv/bin/python" onnxruntime
      run uv pip install --python "$venv/bin/python" --no-deps --require-hashes -r scripts/onnxruntime-gpu.txt
    fi
    # Fail the build, not the first request, when an import is broken.
    run "$venv/bin/python" -c "import lift3d.entrypoints.cli, lift3d.entrypoints.runpod_worker, pipeline.engine, server.app"
    run "$venv/bin/lift3d" --help
    # rembg imports pymatting, whose numba kernels compile at first import (a minute or two):
    # compile them here, into NUMBA_CACHE_DIR (NUMBA_CPU_NAME=generic makes them valid on any
    # x86-64 CPU), so no container start pays for it.
    run "$venv/bin/python" -c "import rembg.bg"
    ;;
  weights)
    dir=${LIFT3D_WEIGHTS_DIR:?set LIFT3D_WEIGHTS_DIR}
    run mkdir -p "$dir"
    if [ -n "${PROFILE:-}" ]; then
      allow=()
      [ -n "${ALLOW_UNVERIFIED:-}" ] && allow=(--allow-unverified)
      run "$venv/bin/lift3d" weights pull --profile "$PROFILE" --weights-dir "$dir" "${allow[@]}"
      if [ -z "${ALLOW_UNVERIFIED:-}" ]; then
        # pull already checked each file; verify prints the table (status + licence) into the build log.
        run "$venv/bin/lift3d" weights verify --profile "$PROFILE" --weights-dir "$dir"
      fi
      # Partial downloads and wheels are not needed at run time.
      run rm -rf "$dir/.lift3d/staging"
    fi
    ;;
  viewer)
    run npm ci --prefix server/demo --no-audit --no-fund --loglevel=error
    ;;
  *)
    echo "docker_install.sh: unknown phase $phase" >&2
    exit 2
    ;;
esac
