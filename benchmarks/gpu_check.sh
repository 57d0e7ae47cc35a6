#!/usr/bin/env bash
# One GPU benchmark run on a bare NVIDIA machine (Python 3.12 + torch with CUDA, no nnU-Net), from the repo root.
#
# Before: bash benchmarks/fetch_gpu_wheels.sh   (fills .whl/, ~16 MiB; .whl/ is git-ignored, so carry it)
# Device tool: run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=570)
#
# Budget: everything, installs included, ends within GPU_CHECK_BUDGET_S (default 500 s): each step gets a
# timeout from what is left, in order of importance:
#   0. the CUDA-only code paths against their references (benchmarks/cuda_checks.py);
#   1. eager (no torch.compile), AMP: PDCR vs loop (A) and train_step time/memory of nnUNetTrainer, UAFS, PDCR
#      and CSSE (B) at nnU-Net's default 3d_fullres plan (patch 128^3, batch 2, features 32..320, 6 stages), plus
#      the benchmark-only variant CSSE[cudnn-IN] (the UAFS norm before its fix) for before/after in one run;
#   2. an op-by-op GPU time profile of one CSSE train_step against nnUNetTrainer (benchmarks/profile_step.py);
#   3. torch.compile on (nnU-Net's own nnUNet_compile path), the 4 trainers, fewer steps; a compile failure is
#      printed with its text, a timeout is reported as such;
#   4. PDCR scaling curves (C).
# Results: $OUT/benchmark_*.json and *.png, the printed tables in $OUT/gpu_results.txt (at most 7 files).
# SimpleITK and imagecodecs are not carried (too large): the benchmark puts placeholder modules for them on
# sys.path for this run only and says so in its output.
# CPU dry run of the same logic: GPU_CHECK_DEVICE=cpu GPU_CHECK_SIZE=tiny GPU_CHECK_SKIP_INSTALL=1 \
#   OUT=/tmp/gc bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."

BUDGET=${GPU_CHECK_BUDGET_S:-500}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
SIZE=${GPU_CHECK_SIZE:-full}
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
LOG="$OUT/gpu_results.txt"
: >"$LOG"
export PYTHONUNBUFFERED=1
START=$SECONDS

say() { echo "$*" | tee -a "$LOG"; }
left() { echo $((BUDGET - (SECONDS - START))); }

# step: NAME RESERVE_S CMD... : run CMD with a timeout of (time left - RESERVE_S), logging everything.
step() {
  local name=$1 reserve=$2
  shift 2
  local limit=$(($(left) - reserve))
  if [ "$limit" -lt 30 ]; then
    say "=== $name: SKIPPED, only $(left) s of the ${BUDGET} s budget left"
    return 0
  fi
  say "=== $name (timeout ${limit} s, $((SECONDS - START)) s elapsed)"
  timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 130 ] || [ "$rc" -eq 137 ]; then
    say "=== $name: STOPPED by its ${limit} s timeout (exit $rc); its partial output is above"
  elif [ "$rc" -ne 0 ]; then
    say "=== $name: FAILED with exit code $rc; its output is above"
  fi
  return 0
}

if [ -z "${GPU_CHECK_SKIP_INSTALL:-}" ]; then
  say "=== installing carried wheels into /tmp/site: $(ls .whl/*.whl 2>/dev/null | wc -l) wheels"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl 2>&1 | tee -a "$LOG" || { say "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
say "=== machine"
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi") | tee -a "$LOG"
python3 -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__,
'| cuda', torch.version.cuda, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" \
  2>&1 | tee -a "$LOG"

BENCH=(python3 -m benchmarks --device "$DEVICE" --size "$SIZE" --out "$OUT")
# reserves: time kept back for the later, less important steps
step "0/4 CUDA-only code paths vs their references" 420 python3 -m benchmarks.cuda_checks
step "1/4 eager: PDCR vs loop + train_step (4 trainers + the UAFS norm before its fix)" 330 "${BENCH[@]}" \
  --parts pdcr,step --tag "${DEVICE}_${SIZE}" \
  --trainers "nnUNetTrainer,nnUNetTrainerUAFS,nnUNetTrainerPDCR,nnUNetTrainerCSSE,nnUNetTrainerCSSE[cudnn-IN]"
step "2/4 eager op profile: nnUNetTrainer vs nnUNetTrainerCSSE" 290 python3 -m benchmarks.profile_step \
  --device "$DEVICE" --size "$SIZE" --trainers nnUNetTrainer,nnUNetTrainerCSSE --top 15
step "3/4 torch.compile: train_step of the 4 trainers" 35 "${BENCH[@]}" --parts step --compile \
  --trainers nnUNetTrainer,nnUNetTrainerUAFS,nnUNetTrainerPDCR,nnUNetTrainerCSSE --warmup 3 --steps 10 \
  --tag "${DEVICE}_${SIZE}_compile"
step "4/4 PDCR scaling" 5 "${BENCH[@]}" --parts scaling --tag "${DEVICE}_${SIZE}_scaling"

say "=== summary of all targets ($((SECONDS - START)) s elapsed)"
python3 -m benchmarks.summary "$OUT"/benchmark_*.json 2>&1 | tee -a "$LOG"
ls -l "$OUT" | tee -a "$LOG"
