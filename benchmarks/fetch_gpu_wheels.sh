#!/usr/bin/env bash
# Download into .whl/ (git-ignored) the wheels that benchmarks/gpu_check.sh installs on the bare GPU machine
# (Python 3.12, x86-64). Run from anywhere; needs pip and PyPI.
#
# Exactly what importing nnUNetTrainer + the CSSE trainers and running train_step needs beyond that machine's
# image: nnunetv2 and the packages its trainer module imports at module level. SimpleITK (~53 MB) and
# imagecodecs (~28 MB) do not fit the 64 MiB a device call carries: the benchmark puts placeholder modules for
# them on sys.path instead (benchmarks/placeholders.py). yacs is a declared dependency of nnunetv2 that nothing
# on this path imports, so it is left out. Versions: those installed on the development machine (2026-11).
set -euo pipefail
cd "$(dirname "$0")/.."

PYPI_WHEELS=(
  nnunetv2==2.8.1
  dynamic_network_architectures==0.4.4
  batchgenerators==0.25.5
  batchgeneratorsv2==0.3.6
  blosc2==4.14.1
  ndindex==1.10.1            # imported by blosc2
  numexpr==2.14.2            # imported by blosc2
  connected-components-3d==4.1.1
  nibabel==5.4.2
)
# Published as a source distribution only: built here into a pure-Python (py3-none-any) wheel.
SDIST_ONLY=(
  acvl_utils==0.2.6
)

mkdir -p .whl
for spec in "${PYPI_WHEELS[@]}"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$spec"
done
for spec in "${SDIST_ONLY[@]}"; do
  python3 -m pip wheel -q --no-deps -w .whl "$spec"
done

# One version per package: two stop the install on the device machine.
dupes=$(ls .whl/*.whl | xargs -n1 basename | sed 's/-[0-9].*//' | tr 'A-Z-' 'a-z_' | sort | uniq -d)
if [ -n "$dupes" ]; then
  echo "error: several versions in .whl/ of: $dupes (remove the stale ones)" >&2
  exit 1
fi
total=$(du -cb .whl/*.whl | tail -1 | cut -f1)
ls -l .whl/
echo "total: $((total / 1024 / 1024)) MiB in $(ls .whl/*.whl | wc -l) wheels"
if [ "$total" -gt $((50 * 1024 * 1024)) ]; then
  echo "error: wheels exceed 50 MiB; a device call carries 64 MiB with the working tree" >&2
  exit 1
fi
