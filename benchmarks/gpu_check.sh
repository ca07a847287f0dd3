#!/usr/bin/env bash
# The GPU check in one command (issue 24), on a machine with a CUDA GPU and only this repository:
#
#   benchmarks/gpu_check.sh [--out DIR] [--root WATERBIRDS] [--train-subset F] [--tiny] [--no-install]
#
# 1. lists the modules the repository's packages import that this Python lacks, with where they
#    are imported (benchmarks/imports_check.py): what needs them is skipped, saying so;
# 2. installs the kernel, every plugin and the third-party example onto $PYTHON (default: python3)
#    with `pip install --no-deps --no-build-isolation -e`, so nothing is downloaded (the machine
#    may reach no registry; pip itself comes from ensurepip where the Python has none);
# 3. runs benchmarks/gpu_check.py: the CUDA tests, gpu_epoch.py on a synthetic full-size
#    Waterbirds, every method's pipeline for one epoch at ResNet-50, 224 px, AMP; one table on
#    stdout, the JSON in OUT/gpu_check.json (OUT: --out, default runs/gpu-check).
#
# --no-install skips step 2 (an installed repository, as in the test suite's CPU run of --tiny).
# Target: 8 minutes on one H100-class GPU, install included.
set -euo pipefail
started=$(date +%s.%N)
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
args=(--started "$started")
install=1
for arg in "$@"; do
    if [[ $arg == --no-install ]]; then install=0; else args+=("$arg"); fi
done
"$PYTHON" benchmarks/imports_check.py >&2
if (( install )); then
    start=$(date +%s.%N)
    editables=$("$PYTHON" benchmarks/imports_check.py --editables)
    "$PYTHON" -m pip --version >/dev/null 2>&1 || "$PYTHON" -m ensurepip --default-pip >/dev/null
    # shellcheck disable=SC2086  # the editables are `-e DIR` pairs, split on purpose
    "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation $editables >&2
    args+=(--install-s "$(awk "BEGIN { printf \"%.1f\", $(date +%s.%N) - $start }")")
fi
exec "$PYTHON" benchmarks/gpu_check.py "${args[@]}"
