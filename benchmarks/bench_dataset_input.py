"""The cost of giving ``fit`` a torch Dataset instead of an array.

A dense MLP is fitted on the same 20,000 x 100 float32 rows given three ways: as the array,
as a plain ``torch.utils.data.TensorDataset`` (read without per-item seeding: its items
draw nothing) and as a TensorDataset subclass (read like any Dataset, each item under its
own seed so that random transforms are reproducible). The fits take turns; the medians'
ratios to the array fit are printed.

Run it alone on the machine, e.g.
``flock /tmp/torch.lock python benchmarks/bench_dataset_input.py``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _args import positive_int
from _timing import print_fit_ratios

from rest_fair import RESTClassifier


class _Subclass(torch.utils.data.TensorDataset):
    """A TensorDataset subclass: its items are read like any Dataset's."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=positive_int, default=20_000)
    parser.add_argument("--epochs", type=positive_int, default=2)
    parser.add_argument("--repeats", type=positive_int, default=3)
    args = parser.parse_args(argv)
    rng = np.random.RandomState(0)
    X = rng.randn(args.rows, 100).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    params = dict(max_epochs=args.epochs, batch_size=256, random_state=0, sparsity=0.0,
                  upweight=None, validation_fraction=0.0)
    inputs = {"array": X, "TensorDataset": torch.utils.data.TensorDataset(torch.from_numpy(X)),
              "subclass": _Subclass(torch.from_numpy(X))}
    header = (f"# fit of {args.rows} x 100 rows, {args.epochs} epochs, torch "
              f"{torch.__version__}, threads={torch.get_num_threads()}")
    print_fit_ratios(inputs, lambda data: RESTClassifier(**params).fit(data, y), args.repeats,
                     header)


if __name__ == "__main__":
    main()
