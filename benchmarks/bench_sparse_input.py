"""The cost of giving ``fit`` a scipy.sparse matrix instead of the same values as an array.

A REST fit (default MLP, ``--sparsity``) runs on rows of ``--features`` columns with
``--nnz`` non-zeros each, given as a CSR matrix and as the dense float32 array of the same
values. The batches of a sparse matrix are made dense as they are drawn, so the ratio is
the price of that step. The fits take turns; the medians' ratio is printed.

Run it alone on the machine, e.g.
``flock /tmp/torch.lock python benchmarks/bench_sparse_input.py``.
"""

from __future__ import annotations

import argparse

import numpy as np
import scipy.sparse as sp
import torch
from _args import positive_int, sparsity_arg
from _timing import print_fit_ratios

from rest_fair import RESTClassifier


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=positive_int, default=5_000)
    parser.add_argument("--features", type=positive_int, default=50_000)
    parser.add_argument("--nnz", type=positive_int, default=50, help="non-zeros per row")
    parser.add_argument("--sparsity", type=sparsity_arg, default=0.99)
    parser.add_argument("--repeats", type=positive_int, default=3)
    args = parser.parse_args(argv)
    X = sp.random(args.rows, args.features, density=args.nnz / args.features, format="csr",
                  dtype=np.float32, random_state=0)
    score = np.asarray(X[:, : args.features // 2].sum(axis=1)).ravel()
    y = score > np.median(score)
    params = dict(max_epochs=1, batch_size=256, random_state=0, sparsity=args.sparsity,
                  module_params={"hidden_layer_sizes": (256,)}, validation_fraction=0.0)
    inputs = {"array": X.toarray(), "scipy.sparse CSR": X}
    header = (f"# 1 epoch on {args.rows} x {args.features} rows, {args.nnz} non-zeros each, "
              f"sparsity {args.sparsity}, torch {torch.__version__}, "
              f"threads={torch.get_num_threads()}")
    print_fit_ratios(inputs, lambda data: RESTClassifier(**params).fit(data, y), args.repeats,
                     header)


if __name__ == "__main__":
    main()
