#!/usr/bin/env bash
# The GPU session's one command, run on the lent machine from the repository root:
#
#   bash benchmarks/gpu_checks.sh OUT_DIR [gpu_checks.py options]
#
# It installs what the GPU machine lacks from the carried folder .gpu_carry/ (made here by
# `bash benchmarks/gpu_carry.sh`: wheels of fairlearn, narwhals and mlxtend, and the
# Fashion-MNIST idx files), installs rest_fair without touching the machine's torch, and
# runs benchmarks/gpu_checks.py (see its docstring for the steps and their time limits).
set -u
out=${1:?usage: bash benchmarks/gpu_checks.sh OUT_DIR [options]}
shift
py=${PYTHON:-python3}
carry=.gpu_carry
mkdir -p "$out"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
if compgen -G "$carry/wheels/*.whl" > /dev/null; then
  "$py" -m pip install -q --no-index --no-deps "$carry"/wheels/*.whl > "$out/install.log" 2>&1
fi
"$py" -m pip install -q --no-deps --no-build-isolation -e . >> "$out/install.log" 2>&1 \
  || { echo "installing rest_fair failed:"; tail -n 20 "$out/install.log"; exit 2; }
if [ -d "$carry/fashion-mnist" ] && [ -z "${REST_FAIR_FASHION_MNIST:-}" ]; then
  export REST_FAIR_FASHION_MNIST="$PWD/$carry/fashion-mnist"
fi
export PYTHONUNBUFFERED=1
"$py" benchmarks/gpu_checks.py "$out" "$@"
