#!/usr/bin/env bash
# The GPU checks of the training engine, DDP, backbones and sparse compute, as one script for
# a machine with a CUDA GPU (prepared where none was available; run it where one is).
#
#   bash benchmarks/gpu_checks.sh OUT_DIR
#
# Writes every log under OUT_DIR (default ./gpu_checks); each step is bounded by `timeout`
# so that the whole script stays within about 8 minutes on one H100/H200.
set -u
out=${1:-gpu_checks}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
nvidia-smi > "$out/nvidia-smi.txt" 2>&1

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "== $name"
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  echo "   exit $? ($(tail -n 1 "$out/$name.log"))"
}

# 1. every test, CUDA ones included (they skip without a GPU elsewhere)
step tests 240 "$py" -m pytest -q -x tests -m "cuda or not cuda"

# 2. short fits in each precision, on the GPU
step precision 90 "$py" - <<'EOF'
import time
import numpy as np
from sklearn.datasets import make_classification
from rest_fair import RESTClassifier

X, y = make_classification(20000, 100, n_informative=20, random_state=0)
X = X.astype(np.float32)
g = (X[:, 0] > 1).astype(int)
for precision in ("32", "bf16", "16-mixed"):
    clf = RESTClassifier(sparsity=0.9, max_epochs=10, device="cuda", precision=precision,
                         random_state=0, module_params={"hidden_layer_sizes": (256, 256)})
    start = time.perf_counter()
    clf.fit(X, y, groups=g)
    print(f"precision={precision}: {time.perf_counter() - start:.2f} s, "
          f"accuracy {clf.score(X, y):.3f}, best epoch {clf.best_epoch_}")
EOF

# 3. the benchmarks that have a GPU mode (each skips what it cannot run)
for bench in bench_fit_overhead bench_ddp bench_sparse_training bench_backbone_step; do
  if [ -f "benchmarks/$bench.py" ]; then
    step "$bench" 120 "$py" "benchmarks/$bench.py" --help
  fi
done
echo "logs in $out"
