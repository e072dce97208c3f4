"""
A resumable benchmark sweep on Colored MNIST
============================================

Dense ERM against REST by hand on Colored MNIST (built offline, 1 % bias-conflicting training
digits), then the same comparison as a sweep with :func:`rest_fair.benchmarks.run_sweep`:
resumable JSONL results, a Markdown table with mean ± std and the two standard plots. The
sweep is what ``rest-fair bench`` runs on the command line.

From the shell::

    python examples/colored_mnist_bench.py                      # about a minute on 2 cores
    python examples/colored_mnist_bench.py --seeds 0 1 2 --out rest_fair_results/bench-example
"""

from __future__ import annotations

import argparse
import tempfile

import matplotlib.pyplot as plt

from rest_fair import RESTClassifier
from rest_fair.benchmarks import preset, run_sweep, write_outputs
from rest_fair.datasets import make_colored_mnist

parser = argparse.ArgumentParser(description="Colored MNIST: ERM vs REST, then a sweep.")
parser.add_argument("--seeds", type=int, nargs="+", default=[0])
parser.add_argument("--epochs", type=int, default=20)
parser.add_argument("--out", default=None, help="results folder (default: a temporary one)")
args = parser.parse_args()

# %%
# The data
# --------
# 3,500 training digits, 1 % of them (35) bias-conflicting: their colour is not the one that
# goes with their digit. Validation and test splits are unbiased (every digit in every colour
# equally often).

data = make_colored_mnist(conflict_ratio=0.01, random_state=0)
print(data)

# %%
# Two methods are two configurations of one estimator
# ---------------------------------------------------
# ERM sees no bias label at all (model selection by validation accuracy); REST gets the
# conflict flags in training and selects the epoch by validation worst-group accuracy.

for name, params in {
    "dense ERM": {"sparsity": 0.0, "upweight": None},
    "REST (90 % sparse, lambda=30)": {"sparsity": 0.9, "upweight": 30.0},
}.items():
    clf = RESTClassifier(module="mlp", max_epochs=args.epochs, batch_size=128, lr=0.05,
                         random_state=0, **params)
    if params["upweight"] is None:
        clf.fit(data.X_train, data.y_train, validation_data=(data.X_valid, data.y_valid))
    else:
        clf.fit(
            data.X_train,
            data.y_train,
            groups=data.conflict_train,
            validation_data=(data.X_valid, data.y_valid, data.conflict_valid),
        )
    correct = clf.predict(data.X_test) == data.y_test
    print(
        f"{name:32s} unbiased acc {correct.mean():.3f}  "
        f"conflicting acc {correct[data.conflict_test].mean():.3f}  "
        f"aligned acc {correct[~data.conflict_test].mean():.3f}"
    )

# %%
# The same as a sweep
# -------------------
# ``preset("quick")`` is the grid of ``rest-fair bench --quick`` (ERM and reweighting/REST,
# dense and 90 % sparse); here with fewer seeds and epochs. Every finished run is appended to
# ``results.jsonl``: running the script again with the same ``--out`` skips finished runs.

out = args.out or tempfile.mkdtemp(prefix="rest_fair_bench_")
config = preset("quick", seeds=tuple(args.seeds), max_epochs=args.epochs)
records = run_sweep(config, out, progress=False)
outputs = write_outputs(records, config, out)
print(outputs["markdown"])

# %%
# The plots the sweep wrote
# -------------------------
# ``write_outputs`` saves them as PNG files next to the tables.

for path in outputs["files"]:
    if path.suffix == ".png":
        image = plt.imread(path)
        fig = plt.figure(figsize=(image.shape[1] / 100, image.shape[0] / 100))
        ax = fig.add_axes((0, 0, 1, 1))
        ax.imshow(image)
        ax.set_axis_off()
plt.show()
