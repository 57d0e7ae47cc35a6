#!/usr/bin/env bash
# One GPU benchmark run, from the repository root of a clone with nnunet-csse installed as README.md says
# (pip install . : nnU-Net v2 and PyTorch with CUDA come with it).
#
# Budget: everything ends within GPU_CHECK_BUDGET_S (default 500 s): each step's timeout is
# what is left minus what the later steps need. Steps (GPU_CHECK_STEPS, default all, in this order):
#   checks   the CUDA-only code paths against their references (benchmarks/cuda_checks.py);
#   eager    no torch.compile, AMP: PDCR vs loop (A) and train_step time/memory (B) at nnU-Net's default
#            3d_fullres plan (patch 128^3, batch 2, features 32..320, 6 stages) of GPU_CHECK_EAGER_TRAINERS
#            (default: nnUNetTrainer, UAFS, PDCR, CSSE and the benchmark-only variants CSSE[uafs-k1] and
#            CSSE[no-full-res-UAFS], which price two departures from the authors' UAFS design in the same run;
#            parts: GPU_CHECK_EAGER_PARTS, default pdcr,step);
#   profile  an op-by-op GPU time profile of one CSSE train_step against nnUNetTrainer (python -m benchmarks profile);
#   compile  torch.compile on (nnU-Net's own nnUNet_compile path, which also compiles PDCRLoss in our trainers):
#            A with the compiled loss and B of GPU_CHECK_COMPILE_TRAINERS (default the 4 trainers), fewer steps; a
#            compile failure is printed with its text, a timeout is reported as such;
#   scaling  PDCR scaling curves (C).
# Results: $OUT/benchmark_*.json and *.png, the printed tables in $OUT/gpu_results.txt.
# CPU dry run of the same logic: GPU_CHECK_DEVICE=cpu GPU_CHECK_SIZE=tiny OUT=/tmp/gc bash benchmarks/gpu_check.sh
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

export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # the benchmarks package lives next to nnunet_csse/
say "=== machine"
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi") | tee -a "$LOG"
python3 -c "import sys, torch; from importlib.metadata import version; print('python', sys.version.split()[0],
'| torch', torch.__version__, '| cuda', torch.version.cuda, '| nnunetv2', version('nnunetv2'), '|',
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" 2>&1 | tee -a "$LOG" \
  || { say "nnunetv2 is not installed: pip install . in the repository root (README.md, Install)"; exit 1; }

BENCH=(python3 -m benchmarks --device "$DEVICE" --size "$SIZE" --out "$OUT")
ORDER=(checks eager profile compile scaling)
declare -A NEEDS=([checks]=20 [eager]=60 [profile]=40 [compile]=230 [scaling]=30)  # seconds each step needs
WANTED=" ${GPU_CHECK_STEPS:-${ORDER[*]}} "
EAGER_TRAINERS=${GPU_CHECK_EAGER_TRAINERS:-nnUNetTrainer,nnUNetTrainerUAFS,nnUNetTrainerPDCR,nnUNetTrainerCSSE,\
nnUNetTrainerCSSE[uafs-k1],nnUNetTrainerCSSE[no-full-res-UAFS]}
COMPILE_TRAINERS=${GPU_CHECK_COMPILE_TRAINERS:-nnUNetTrainer,nnUNetTrainerUAFS,nnUNetTrainerPDCR,nnUNetTrainerCSSE}
wanted() { [[ "$WANTED" == *" $1 "* ]]; }
# reserve: what the wanted steps after NAME need, kept back from NAME's timeout
reserve_after() {
  local total=0 seen=0 s
  for s in "${ORDER[@]}"; do
    if [ "$seen" = 1 ] && wanted "$s"; then total=$((total + NEEDS[$s])); fi
    [ "$s" = "$1" ] && seen=1
  done
  echo "$total"
}
wanted checks && step "checks: CUDA-only code paths vs their references" "$(reserve_after checks)" \
  python3 -m benchmarks.cuda_checks
wanted eager && step "eager: train_step ($EAGER_TRAINERS), PDCR vs loop" "$(reserve_after eager)" "${BENCH[@]}" \
  --parts "${GPU_CHECK_EAGER_PARTS:-pdcr,step}" --trainers "$EAGER_TRAINERS" --tag "${DEVICE}_${SIZE}"
wanted profile && step "profile: eager op profile, nnUNetTrainer vs nnUNetTrainerCSSE" "$(reserve_after profile)" \
  python3 -m benchmarks profile --device "$DEVICE" --size "$SIZE" --trainers nnUNetTrainer,nnUNetTrainerCSSE \
  --top 15
wanted compile && step "compile: train_step ($COMPILE_TRAINERS), compiled PDCR vs loop" "$(reserve_after compile)" \
  "${BENCH[@]}" --parts "${GPU_CHECK_COMPILE_PARTS:-pdcr,step}" --compile --trainers "$COMPILE_TRAINERS" \
  --warmup 3 --steps 10 --tag "${DEVICE}_${SIZE}_compile"
wanted scaling && step "scaling: PDCR scaling curves" 5 "${BENCH[@]}" --parts scaling --tag "${DEVICE}_${SIZE}_scaling"

say "=== summary of all targets ($((SECONDS - START)) s elapsed)"
python3 -m benchmarks summary "$OUT"/benchmark_*.json 2>&1 | tee -a "$LOG"
ls -l "$OUT" | tee -a "$LOG"
