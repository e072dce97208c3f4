#!/usr/bin/env bash
# The GPU checks of the training engine, DDP, backbones and sparse compute, as one script for
# a machine with a CUDA GPU (prepared where none was available; run it where one is).
#
#   bash benchmarks/gpu_checks.sh OUT_DIR
#
# Writes every log under OUT_DIR (default ./gpu_checks); each step is bounded by `timeout`
# so that the whole script stays within about 8.5 minutes on one H100/H200 (most steps
# take far less than their bound).
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

# 1. the tests that exercise CUDA (CUDA-only ones skip on a CPU machine), then the rest of
#    the engine's tests on this machine
step tests_cuda 90 "$py" -m pytest -q -rs -m cuda tests
step tests_engine 120 "$py" -m pytest -q -x tests/test_training_engine.py \
  tests/test_sparse_compute.py tests/test_checkpoint.py

# 2. short fits in each precision, on the GPU
step precision 60 "$py" - <<'EOF2'
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
          f"accuracy {clf.score(X, y):.3f}, best epoch {clf.best_epoch_}, "
          f"sparse-compute layers {clf.sparse_compute_layers_}")
EOF2

# 3. benchmarks on the GPU: masked vs sparse compute, one-GPU DDP vs the plain run,
#    ResNet-50 training steps dense vs masked (fp32 and bf16)
step bench_sparse_training 90 "$py" benchmarks/bench_sparse_training.py --device cuda \
  --repeats 2 --epochs 2
step bench_ddp 60 "$py" benchmarks/bench_ddp.py --device cuda --nproc 1 --repeats 2
step bench_backbones 90 "$py" benchmarks/bench_backbones.py --device cuda --model resnet50 \
  --repeats 2 --steps 10 --out "$out/bench_backbones.json"
echo "logs in $out"
