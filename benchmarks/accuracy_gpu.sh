#!/usr/bin/env bash
# Accuracy benchmark on one GPU at nnU-Net's default plan: nnUNetTrainer vs nnUNetTrainerCSSE on MSD Hippocampus,
# fold 0, same seed and budget, then `nnunet-csse compare` (python -m benchmarks accuracy does all of it).
#
#   bash benchmarks/accuracy_gpu.sh --data DIR [--workdir DIR] [--out DIR] [--dry-run]
#
#   --data DIR     a copy of MSD Task04 Hippocampus: images/NAME.nii.gz + labels/NAME.nii.gz (or imagesTr/ + labelsTr/);
#                  converted once into <workdir>/nnUNet_raw/Dataset004_Hippocampus, then planned and preprocessed
#   --workdir DIR  nnU-Net folders of the benchmark (default work_dirs/accuracy; finished runs there are reused)
#   --out DIR      results (default benchmarks/results/accuracy; dry run: $TMPDIR/nnunet-csse-accuracy-dry-run)
#   --dry-run      the same steps on CPU at a tiny size (cpu_tiny plans preset, 1 epoch x 2 iterations), to check
#                  the script and the data on a machine without a GPU
#
# Run from the repository root of a clone with nnunet-csse installed as README.md says (pip install .). Budget
# (environment): ACCURACY_EPOCHS x ACCURACY_ITERATIONS, ACCURACY_VAL_ITERATIONS per epoch; default 15 x 250, 50
# (nnU-Net's epoch of 250 iterations, 15 of them). Sized from nnU-Net's reference epoch time for this dataset
# (about 10 s per epoch on A100-class GPUs) to fit about 10 minutes for both trainers on one H100-class GPU, with
# preprocessing, start-up, torch.compile and the final validation; an estimate, the outputs state what each run
# took. ACCURACY_FOLDS (default 0) and ACCURACY_TRAINERS (default "baseline CSSE") choose the runs.
set -euo pipefail

data="" workdir="work_dirs/accuracy" out="" dry_run=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --data) data="$2"; shift 2 ;;
        --workdir) workdir="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
if [[ -z "$data" ]]; then
    echo "error: pass --data DIR, a Hippocampus copy with images/NAME.nii.gz and labels/NAME.nii.gz" >&2
    exit 2
fi
if [[ ! -f benchmarks/accuracy.py ]]; then
    echo "error: run from the repository root (benchmarks/accuracy.py not found in $(pwd))" >&2
    exit 2
fi

read -r -a folds <<< "${ACCURACY_FOLDS:-0}"
read -r -a trainers <<< "${ACCURACY_TRAINERS:-baseline CSSE}"
common=(-d 4 -c 3d_fullres --convert-from "$data" --workdir "$workdir" --folds "${folds[@]}"
        --trainers "${trainers[@]}" --seeds 0 --fractions 1.0)

if [[ "$dry_run" == 1 ]]; then
    out="${out:-${TMPDIR:-/tmp}/nnunet-csse-accuracy-dry-run}"
    echo "dry run on CPU: cpu_tiny preset, 1 epoch x 2 iterations, results in $out"
    exec python -m benchmarks accuracy "${common[@]}" --preset cpu_tiny --epochs 1 --iterations 2 \
        --val-iterations 1 --device cpu --out "$out"
fi

out="${out:-benchmarks/results/accuracy}"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "error: torch sees no CUDA device; use --dry-run for the CPU check" >&2
    exit 2
}
python - <<'EOF'
import torch
props = torch.cuda.get_device_properties(0)
print(f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB; torch {torch.__version__}, CUDA {torch.version.cuda}")
EOF
start=$(date +%s)
python -m benchmarks accuracy "${common[@]}" --epochs "${ACCURACY_EPOCHS:-15}" \
    --iterations "${ACCURACY_ITERATIONS:-250}" --val-iterations "${ACCURACY_VAL_ITERATIONS:-50}" --device cuda \
    --out "$out"
echo "accuracy_gpu.sh: $(( $(date +%s) - start )) s in all"
