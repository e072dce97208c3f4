#!/usr/bin/env bash
# The GPU session's one command, run on the lent machine from the repository root:
#
#   bash benchmarks/gpu_checks.sh OUT_DIR [gpu_checks.py options]
#
# It puts on the Python path what the GPU machine lacks from the carried folder .gpu_carry/
# (made here by `bash benchmarks/gpu_carry.sh`: wheels of fairlearn, narwhals and mlxtend,
# and the Fashion-MNIST idx files) and rest_fair from this checkout, and runs
# benchmarks/gpu_checks.py (see its docstring for the steps and their time limits).
# Nothing is built and nothing of the machine's own Python is changed: a carried wheel is
# unpacked into a folder of its own only when its distribution is missing, and rest_fair
# is imported from the checkout, so no build backend (setuptools) is needed.
set -u
out=${1:?usage: bash benchmarks/gpu_checks.sh OUT_DIR [options]}
shift
py=${PYTHON:-python3}
carry=.gpu_carry
site=${REST_FAIR_GPU_SITE:-${TMPDIR:-/tmp}/rest_fair_gpu_site}
mkdir -p "$out"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
: > "$out/install.log"
missing=()
for wheel in "$carry"/wheels/*.whl; do
  [ -e "$wheel" ] || continue
  dist=$(basename "$wheel"); dist=${dist%%-*}
  if ! "$py" -c 'import importlib.metadata as m, sys; m.version(sys.argv[1])' "$dist" \
      2> /dev/null; then
    missing+=("$wheel")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "unpacking into $site: ${missing[*]}" >> "$out/install.log"
  "$py" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" \
      "${missing[@]}" >> "$out/install.log" 2>&1 \
    || { echo "unpacking the carried wheels failed (the checks go on):";
         tail -n 20 "$out/install.log"; }
fi
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
"$py" -c 'import rest_fair.estimator; print("rest_fair", rest_fair.__version__,
"from", rest_fair.__file__)' >> "$out/install.log" 2>&1 \
  || { echo "importing rest_fair failed:"; tail -n 20 "$out/install.log"; exit 2; }
# the checks themselves need none of the carried packages: a failed import is only noted
"$py" -c 'import fairlearn, mlxtend, narwhals' >> "$out/install.log" 2>&1 \
  || echo "a carried package does not import (see install.log); the checks go on"
if [ -d "$carry/fashion-mnist" ] && [ -z "${REST_FAIR_FASHION_MNIST:-}" ]; then
  export REST_FAIR_FASHION_MNIST="$PWD/$carry/fashion-mnist"
fi
export PYTHONUNBUFFERED=1
"$py" benchmarks/gpu_checks.py "$out" "$@"
