"""Where does a sparse ``fit`` spend its time? Wall time per phase, in ms per fit.

Fits ``RESTClassifier`` (MLP, ``sparse_compute="auto"``, reweighting off, RigL once per
epoch) on synthetic data, as ``bench_sparse_training.py`` does, after two warm-up fits,
and times the library's own functions from the outside: each is wrapped in a timer for the
measured fits only. Times are inclusive (a phase contains the phases it calls: the
training steps contain the kernels and the topology updates, an update contains its
scans), so the rows do not add up; the wrappers add a few microseconds per call. The last column
counts the minor page faults of each phase (the first touch of freshly mapped memory, which
costs about 1.5 µs a page on a virtual machine where it was measured).

With ``--compare-dense`` the same fits run dense (``sparsity=0``) in turns with the sparse
ones, and the ratio of the median fit times is printed, as the whole-fit goal counts it.
With ``--compare-layer-by-layer`` the sparse fits also run in turns with fits whose chains
of CSR layers run layer by layer (:func:`rest_fair.sparse.csr_chain.link_chains` left
out), to measure what the chains save; with ``--compare-torch-step``, in turns with fits
whose optimizer steps all go through ``optimizer.step()`` instead of
:func:`rest_fair.training.optimizer_step.optimizer_step`. Run it alone on the machine, e.g.::

    flock /tmp/torch.lock python benchmarks/bench_fit_phases.py --threads 2
"""

from __future__ import annotations

import argparse
import collections
import functools
import statistics
import time

try:
    import resource
except ImportError:  # not on Windows
    resource = None

import torch
from _args import positive_int, sparsity_arg
from bench_sparse_training import N_FEATURES, _data

from rest_fair import RESTClassifier, models, objectives
from rest_fair import _data as data_module
from rest_fair import _fit as fit_module
from rest_fair.sparse import csr_engine, csr_linear, kernels
from rest_fair.training import loop, parts, precision

#: (label, owner, attribute): what is timed, in the order printed.
PHASES = [
    ("fit", RESTClassifier, "fit"),
    ("  building the network (dense init)", fit_module, "build_module"),
    ("  masks (ERK, random)", parts, "make_sparsity"),
    ("  CSR layers built", parts, "make_sparse_compute"),
    ("  training loop", loop.TrainingRun, "fit_loop"),
    ("    gathering the batches (training and validation)", data_module._TensorSource,
     "take"),
    ("    training steps", loop.TrainingRun, "train_step"),
    ("      forward passes (training and validation)", models.MLP, "forward"),
    ("      loss", objectives.ERMObjective, "__call__"),
    ("      backward passes", precision.Precision, "backward"),
    ("      optimizer steps", precision.Precision, "step"),
    ("      kernels: packing", kernels, "pack"),
    ("      kernels: forward products", kernels, "csr_forward"),
    ("      kernels: backward products", kernels, "csr_backward"),
    ("      dense-gradient scans (RigL)", csr_linear.CSRLinear, "_scan_dense_gradient"),
    ("      topology updates", loop.TrainingRun, "_update_topology"),
    ("    validation", loop.TrainingRun, "validate"),
    ("    keeping the best epoch", loop.TrainingRun, "select"),
    ("    dense layers back", csr_engine.CSRDynamicSparsity, "finish"),
]


def _minor_faults() -> int:
    """Page faults of this process so far that found their page in memory: the first
    touch of freshly mapped memory (0 where the platform does not count them)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else 0


def _timed(raw, label: str, seconds: dict, calls: collections.Counter,
           faults: collections.Counter):
    @functools.wraps(raw)
    def wrapper(*args, **kwargs):
        faulted, start = _minor_faults(), time.perf_counter()
        try:
            return raw(*args, **kwargs)
        finally:
            seconds[label] += time.perf_counter() - start
            faults[label] += _minor_faults() - faulted
            calls[label] += 1

    return wrapper


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--hidden", type=positive_int, nargs="+", default=[2048, 2048])
    parser.add_argument("--sparsity", type=sparsity_arg, default=0.99)
    parser.add_argument("--samples", type=positive_int, default=6144)
    parser.add_argument("--epochs", type=positive_int, default=3)
    parser.add_argument("--batch", type=positive_int, default=256)
    parser.add_argument("--fits", type=positive_int, default=5)
    parser.add_argument("--compare-dense", action="store_true")
    parser.add_argument("--compare-layer-by-layer", action="store_true")
    parser.add_argument("--compare-torch-step", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    X, y = _data(args.samples, seed=0)

    def estimator(sparsity: float) -> RESTClassifier:
        return RESTClassifier(sparsity=sparsity, module="mlp", max_epochs=args.epochs,
                              module_params={"hidden_layer_sizes": tuple(args.hidden)},
                              batch_size=args.batch, lr=0.05, lr_scheduler="constant",
                              upweight=None, random_state=0)

    for sparsity in (args.sparsity, 0.0) if args.compare_dense else (args.sparsity,):
        estimator(sparsity).fit(X, y)
    seconds: dict[str, float] = collections.defaultdict(float)
    calls: collections.Counter = collections.Counter()
    faults: collections.Counter = collections.Counter()
    originals = [(owner, name, owner.__dict__[name]) for _, owner, name in PHASES]
    for (label, owner, name), (_, _, raw) in zip(PHASES, originals, strict=True):
        setattr(owner, name, _timed(raw, label, seconds, calls, faults))
    try:
        for _ in range(args.fits):
            estimator(args.sparsity).fit(X, y)
    finally:
        for owner, name, raw in originals:
            setattr(owner, name, raw)
    print(f"# bench_fit_phases: MLP {N_FEATURES}-{'-'.join(map(str, args.hidden))}-10 at "
          f"sparsity {args.sparsity}, {args.samples} samples, {args.epochs} epochs, batch "
          f"{args.batch}, torch {torch.__version__}, threads={args.threads}; ms per fit, "
          f"mean of {args.fits} fits, inclusive\n")
    print("| phase | ms per fit | calls per fit | % of fit | page faults per fit |\n"
          "|---|---|---|---|---|")
    total = seconds["fit"]
    for label, _, _ in PHASES:
        depth = (len(label) - len(label.lstrip())) // 2
        print(f"| {'· ' * depth}{label.strip()} "
              f"| {1e3 * seconds[label] / args.fits:.1f} | {calls[label] / args.fits:g} "
              f"| {100 * seconds[label] / total:.1f} | {faults[label] / args.fits:.0f} |")
    if args.compare_dense:
        times: dict[float, list[float]] = {args.sparsity: [], 0.0: []}
        for _ in range(args.fits):
            for sparsity in times:
                start = time.perf_counter()
                estimator(sparsity).fit(X, y)
                times[sparsity].append(time.perf_counter() - start)
        dense, sparse = (statistics.median(times[s]) for s in (0.0, args.sparsity))
        print(f"\nwhole fit, medians of {args.fits} in turns: dense {dense:.2f} s, sparse "
              f"{1e3 * sparse:.0f} ms, {dense / sparse:.1f}x dense")
    if args.compare_layer_by_layer:
        chained, unchained = _with_and_without(lambda: estimator(args.sparsity).fit(X, y),
                                               args.fits, csr_engine, "link_chains",
                                               lambda module: {})
        print(f"\nsparse fit, medians of {args.fits} in turns: chains of CSR layers "
              f"{1e3 * chained:.0f} ms, layer by layer {1e3 * unchained:.0f} ms, "
              f"{chained / unchained:.3f}x")
    if args.compare_torch_step:
        ours, torchs = _with_and_without(lambda: estimator(args.sparsity).fit(X, y),
                                         args.fits, precision, "optimizer_step",
                                         lambda optimizer: optimizer.step())
        print(f"\nsparse fit, medians of {args.fits} in turns: the loop's SGD step "
              f"{1e3 * ours:.0f} ms, optimizer.step() {1e3 * torchs:.0f} ms, "
              f"{ours / torchs:.3f}x")


def _with_and_without(fit, n: int, owner, name: str, replacement) -> tuple[float, float]:
    """Median seconds of ``fit()`` as it is and with ``owner.name`` replaced, in turns."""
    original = getattr(owner, name)
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(n):
        for as_is in times:
            setattr(owner, name, original if as_is else replacement)
            try:
                start = time.perf_counter()
                fit()
                times[as_is].append(time.perf_counter() - start)
            finally:
                setattr(owner, name, original)
    return statistics.median(times[True]), statistics.median(times[False])


if __name__ == "__main__":
    main()
