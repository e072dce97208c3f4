#!/usr/bin/env bash
# Fill .gpu_carry/ (ignored by git) with what benchmarks/gpu_checks.sh needs on a GPU machine
# that reaches no package registry: wheels of the dependencies it lacks, and Debian's
# Fashion-MNIST idx files. Name .gpu_carry in the device tool's `carry` (about 32 MB).
set -eu
cd "$(dirname "$0")/.."
carry=.gpu_carry
rm -rf "$carry" && mkdir -p "$carry/wheels" "$carry/fashion-mnist"
python3 -m pip download -q --no-deps fairlearn narwhals mlxtend -d "$carry/wheels"
src=${REST_FAIR_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
cp "$src"/*-ubyte.gz "$carry/fashion-mnist/"
du -sh "$carry"
