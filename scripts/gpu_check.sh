#!/usr/bin/env bash
# The offline GPU check (docs/gpu.md): one unattended command that runs every CUDA path and
# leaves its results as at most 8 files in OUTDIR.
#
#   scripts/gpu_check.sh OUTDIR          # on the GPU machine: offline, kit from .gpukit/
#   scripts/gpu_check.sh --cpu OUTDIR    # anywhere: the same steps on CPU, tiny weights, this venv
#
# Steps, each under its own time cap, all inside LIFT3D_CHECK_BUDGET_S (GPU default 470 s):
#   install + closure (GPU only)  the kit's wheels into a private folder, checked against the
#                                 machine's real package versions
#   environment  versions, device, driver and CUDA (fails on a GPU run that sees no CUDA)
#   pytest     every test marked gpu
#   pipeline   benchmarks.bench_pipeline: the upstream baseline and our configurations, 2 photos
#   http       benchmarks.bench_http: 1 and 4 clients, GPU utilisation sampled
#   generate   lift3d generate on a real photo -> model.glb
#   validate   the GLB: structural checks, plus the Khronos validator where node exists
# A failing step is recorded and the next one still runs. OUTDIR ends with:
#   summary.json summary.md gpu_check.log pipeline-*.json pipeline-*.md http-*.json http-*.md model.glb
# Exit 0 when every step passed, 1 when one failed, 2 when the check could not start.
set -uo pipefail

MODE=gpu
if [ "${1:-}" = "--cpu" ]; then MODE=cpu; shift; fi
if [ $# -ne 1 ] || [ "${1#-}" != "$1" ]; then
  echo "usage: scripts/gpu_check.sh [--cpu] OUTDIR" >&2
  exit 2
fi
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$1" && OUT=$(cd "$1" && pwd) || exit 2
if [ -n "$(ls -A "$OUT")" ]; then
  echo "OUTDIR $OUT is not empty: the check leaves an exact file set, so it starts from an empty folder" >&2
  exit 2
fi
cd "$REPO" || exit 2
KIT=${LIFT3D_GPUKIT_DIR:-$REPO/.gpukit}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/lift3d-gpu-check.XXXXXX") || exit 2
trap 'rm -rf "$WORK"' EXIT
LOG=$OUT/gpu_check.log
STEPS=$WORK/steps.tsv
: >"$STEPS"
COMMAND="scripts/gpu_check.sh$([ "$MODE" = cpu ] && echo ' --cpu') OUTDIR"

export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export HF_HOME=$WORK/hf

if [ "$MODE" = gpu ]; then
  PY=${PYTHON:-python3}
  BUDGET=${LIFT3D_CHECK_BUDGET_S:-470}
  CAP_PYTEST=90 CAP_PIPELINE=170 CAP_HTTP=90 CAP_GENERATE=50 CAP_VALIDATE=30
  WEIGHTS=dummy DEVICE=cuda
  IMAGES=$KIT/images
  # Baseline = upstream (fp16, eager, 75 steps); the fast pipeline (TripoSR, float32: seconds, so
  # it runs before the time budget can leave it out); ours = bf16 at 75 and 28 steps; and the
  # fastest multiview setting: bf16, 28 steps, the smaller LRM.
  PIPELINE_ARGS=(-n 2 --warmup 0 --time-budget $((CAP_PIPELINE - 70))
    --config baseline --config triposr --config bf16-75 --config bf16-28
    --config bf16-28-nerf-base:dtype=bfloat16,steps=28,reconstruct.model=instant-nerf-base)
  HTTP_ARGS=(-n 2 --levels 1,4 --window 15 --warmup 1 --steps 28 --job-timeout 90 --startup-timeout 150)
  GENERATE_ARGS=(--steps 28 --seed 0)
  for needed in "$KIT/wheels" "$KIT/weights/rembg/u2netp.onnx" "$KIT/images"; do
    if [ ! -e "$needed" ]; then
      echo "no kit at $KIT ($needed is missing): run scripts/gpu_kit.sh here and carry .gpukit" >&2
      exit 2
    fi
  done
else
  PY=${PYTHON:-$REPO/.venv/bin/python}
  if [ ! -x "$PY" ]; then
    echo "no venv at $PY: run make install first" >&2
    exit 2
  fi
  BUDGET=${LIFT3D_CHECK_BUDGET_S:-900}
  CAP_PYTEST=150 CAP_PIPELINE=240 CAP_HTTP=150 CAP_GENERATE=120 CAP_VALIDATE=120
  WEIGHTS=tiny DEVICE=cpu
  # The GPU run's configuration names, at CPU dtype and toy steps (each marked as changed from its
  # preset); bf16-75 is left out here: at CPU dtype it would repeat the baseline.
  # A 512-px texture and 5,000 faces keep the CPU finish stage short; the GPU run keeps the defaults.
  small=finish.texture_size=512,finish.target_faces=5000
  PIPELINE_ARGS=(-n 2 --warmup 0 --matmul-size 512 --copy-mb 32 --time-budget $((CAP_PIPELINE - 60))
    --config "baseline:dtype=float32,steps=2,$small" --config "bf16-28:dtype=float32,steps=1,$small"
    --config "bf16-28-nerf-base:dtype=float32,steps=1,reconstruct.model=instant-nerf-base,$small"
    --config "triposr:$small")
  HTTP_ARGS=(-n 2 --levels 1,4 --window 4 --warmup 1 --steps 1 --job-timeout 120 --startup-timeout 120
    --option texture_size=512 --option target_faces=5000)
  GENERATE_ARGS=(--steps 1 --seed 0 --texture-size 512 --target-faces 5000)
  IMAGES=$KIT/images
  if [ ! -d "$IMAGES" ]; then
    IMAGES=${LIFT3D_SHARED_DIR:-$REPO/../shared}/images
  fi
fi
export LIFT3D_WEIGHTS_DIR=${LIFT3D_WEIGHTS_DIR:-$KIT/weights}
DEADLINE=$(($(date +%s) + BUDGET))

say() { echo "$*" | tee -a "$LOG"; }

# run_step NAME CAP COMMAND...: output to the log (and the terminal when SHOW=1), one line to
# steps.tsv (name, rc, start, end, cap). timeout signals the step's whole process group.
run_step() {
  local name=$1 cap=$2 now left started ended rc
  shift 2
  now=$(date +%s)
  left=$((DEADLINE - now))
  if [ "$cap" -gt "$left" ]; then cap=$left; fi
  if [ "$cap" -lt 5 ]; then
    say "== $name: not run, the ${BUDGET} s budget is spent"
    printf '%s\tnot-run\t%s\t%s\t0\n' "$name" "$now" "$now" >>"$STEPS"
    return 1
  fi
  say "== $name (cap ${cap} s): $*"
  started=$(date +%s.%N)
  if [ "${SHOW:-0}" = 1 ]; then
    timeout --kill-after=15 "$cap" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
  else
    timeout --kill-after=15 "$cap" "$@" >>"$LOG" 2>&1
    rc=$?
  fi
  ended=$(date +%s.%N)
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$started" "$ended" "$cap" >>"$STEPS"
  say "== $name: exit $rc after $(awk -v a="$started" -v b="$ended" 'BEGIN { printf "%.0f", b - a }') s"
  return $rc
}

# rembg imports pymatting, whose numba kernels compile at first import (one to two minutes on one
# core) into a cache beside them: compile them in the background while the next steps run, so
# no benchmark pays for it. The pipeline step waits for it.
start_numba_warmup() {
  timeout 300 "$PY" -c "import time; started = time.perf_counter(); import rembg.bg; \
print(f'rembg imported, numba kernels compiled or cached, in {time.perf_counter() - started:.0f} s')" >>"$LOG" 2>&1 &
  WARM_PID=$!
}

say "lift3d GPU check, $MODE mode, $(date -u +%Y-%m-%dT%H:%M:%SZ), budget ${BUDGET} s"

if [ "$MODE" = gpu ]; then
  SITE=$WORK/site
  run_step install 90 "$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir \
    --disable-pip-version-check --target "$SITE" "$KIT"/wheels/*.whl
  KIT_PATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
  PYTHONPATH=$KIT_PATH start_numba_warmup
  # Against the packages really there (before the kit is on the path): versions, tags, Python.
  SHOW=1 run_step closure 30 "$PY" scripts/gpukit.py check --wheels "$KIT/wheels" --machine -v
  export PYTHONPATH=$KIT_PATH
  cp "$KIT/MANIFEST.json" "$WORK/kit-manifest.json" 2>/dev/null
  { nvidia-smi 2>&1 || echo "nvidia-smi failed"; } | tee -a "$LOG"
else
  start_numba_warmup
  if [ ! -d "$IMAGES" ]; then
    # A fresh clone has no ../shared: two synthetic object photos keep the steps the same.
    IMAGES=$WORK/images
    "$PY" - "$IMAGES" <<'PY'
import sys
from pathlib import Path

from pipeline.engine import warmup_image_png

folder = Path(sys.argv[1])
folder.mkdir(parents=True)
for index, size in enumerate((320, 384)):
    (folder / f"synthetic-{index}.png").write_bytes(warmup_image_png(size))
PY
  fi
fi

# Which commit these files are: git where the copy has it, else the kit's stamp, file by file.
while IFS= read -r assignment; do
  export "${assignment?}"
done < <("$PY" scripts/gpu_check_report.py source "$KIT" --json "$WORK/source.json" 2>>"$LOG")
SHOW=1 run_step environment 60 "$PY" scripts/gpu_check_report.py environment --mode "$MODE" \
  --json "$WORK/environment.json"

mapfile -t GPU_TESTS < <(grep -rl --include="test_*.py" "pytest.mark.gpu" tests | sort)
run_step pytest "$CAP_PYTEST" "$PY" -m pytest -m gpu -p no:cacheprovider -q -rA \
  --junitxml="$WORK/pytest.xml" "${GPU_TESTS[@]}"

wait "$WARM_PID"
run_step pipeline "$CAP_PIPELINE" "$PY" -m benchmarks.bench_pipeline --weights "$WEIGHTS" --device "$DEVICE" \
  --images "$IMAGES" --out "$OUT" "${PIPELINE_ARGS[@]}"

run_step http "$CAP_HTTP" "$PY" -m benchmarks.bench_http --weights "$WEIGHTS" --device "$DEVICE" \
  --images "$IMAGES" --out "$OUT" "${HTTP_ARGS[@]}"

PHOTO=$(find "$IMAGES" -maxdepth 1 -type f \( -name '*.jpg' -o -name '*.jpeg' -o -name '*.png' \) | sort | head -n 1)
run_step generate "$CAP_GENERATE" "$PY" -m lift3d.entrypoints.cli generate "$PHOTO" -o "$OUT/model.glb" \
  --weights "$WEIGHTS" --device "$DEVICE" "${GENERATE_ARGS[@]}"

VALIDATE_ARGS=()
# Here the validator can be installed with npm: a CPU run must really run it where node exists.
if [ "$MODE" = cpu ] && command -v node >/dev/null; then VALIDATE_ARGS=(--require-khronos); fi
if [ -f "$OUT/model.glb" ]; then
  run_step validate "$CAP_VALIDATE" "$PY" scripts/gpu_check_report.py glb "$OUT/model.glb" --kit "$KIT" \
    --json "$WORK/glb.json" "${VALIDATE_ARGS[@]}"
else
  say "== validate: no model.glb to check"
  printf 'validate\t1\t%s\t%s\t%s\n' "$(date +%s)" "$(date +%s)" "$CAP_VALIDATE" >>"$STEPS"
fi

say "== summary"
"$PY" scripts/gpu_check_report.py summary "$WORK" "$OUT" --mode "$MODE" --command "$COMMAND" 2>>"$LOG" | tee -a "$LOG"
status=${PIPESTATUS[0]}
if [ ! -f "$OUT/summary.json" ]; then
  say "the summary could not be written (see the log)"
  exit 1
fi
exit "$status"
