"""Every check a GPU session runs, as one script with a bounded run time.

::

    python benchmarks/gpu_checks.py OUT_DIR                       # on the GPU machine
    python benchmarks/gpu_checks.py OUT_DIR --device cpu --smoke  # tiny sizes, any machine

The steps, each bounded by its own time limit and recorded even when it fails:

1. ``tests``: the CUDA-marked tests (``pytest -m cuda``).
2. ``precision``: short fits in ``"32"``, ``"bf16"`` and ``"16-mixed"``; inactive weights
   must be exactly 0 in the float32 master weights, every parameter finite. Then a fit of
   a network with an ``nn.LSTM`` and an ``nn.MultiheadAttention`` (masked in place, which
   on CUDA is where cuDNN's flattened recurrent weights live), with the same checks and the
   count of torch's warnings that recurrent weights left their single contiguous chunk.
3. ``throughput``: images/s of a minimal hand-written torch loop, a dense rest_fair fit and
   a REST fit at 90 % (masked), with the same model (ResNet-50 at 224, batch 64), data and
   optimizer (SGD, momentum 0.9), in float32 and bfloat16; steady-state steps only.
4. ``sparse_compute``: masked vs CSR time per optimizer step at 90 / 99 % and what
   ``sparse_compute="auto"`` chose.
5. ``ddp``: a one-rank data-parallel fit (NCCL on CUDA, gloo on a CPU) against the
   plain fit: the wrapper's overhead per step.
6. ``colored_fashion_mnist``: the paper's setting -- Colored Fashion-MNIST at 1 %
   conflicting, the paper's CNN (64/128/256 channels); ERM, dense reweighting, REST 0.9
   and REST 0.99, for the epochs and seeds that fit the time left.

Every step appends its numbers to ``OUT_DIR/results.json`` (and a readable copy,
``OUT_DIR/summary.md``) as soon as it ends, so a run cut short keeps what it measured;
``OUT_DIR/steps.log`` holds every step's output. These three files are all the script
writes there (the device tool brings back at most 8 files). A step that starts processes
runs them in a process group of its own, stopped whole at the step's limit. The steps
together stay within ``--budget`` seconds (540 by default, under the GPU session's 590 s
command timeout with the install before it): a step is given the smaller of its own limit
and the budget left, and one with no time left is recorded as skipped. The exit status
is 1 when any step failed or was skipped. ``--smoke`` shrinks every size so the whole
script runs in about a minute on a CPU; the test suite runs it that way, so every step is
exercised before GPU minutes are spent on it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
GRACE = 5  # seconds past a step's limit before its alarm stops it


# ---------------------------------------------------------------------------- helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _StepClock:
    """Times optimizer steps from ``on_batch_end`` to ``on_batch_end`` (a callback)."""

    def __init__(self, device: torch.device) -> None:
        from rest_fair.callbacks import Callback

        clock = self

        class StepClock(Callback):
            def on_batch_end(self, net: Any, **kwargs: Any) -> None:
                _sync(device)
                clock.times.append(time.perf_counter())

        self.times: list[float] = []
        self.callback = StepClock()

    def seconds_per_step(self, skip: int) -> float:
        """Median interval between steps, leaving out the first ``skip`` steps."""
        gaps = np.diff(self.times[skip:])
        if len(gaps) == 0:
            raise RuntimeError(f"too few steps to time ({len(self.times)} with skip={skip})")
        return float(np.median(gaps))


def _masked_weights_exact(clf: Any) -> dict[str, Any]:
    """Inactive weights exactly zero (float32 master weights), every parameter finite."""
    params = dict(clf.module_.named_parameters())
    checked, nonzero, dtypes = 0, 0, set()
    for name, mask in clf.masks_.items():
        weight = params.get(name)
        if weight is None:  # a CSR layer stores only its active weights
            continue
        checked += 1
        dtypes.add(str(weight.dtype))
        nonzero += int((weight.detach()[~mask.to(weight.device)] != 0).sum())
    finite = all(bool(torch.isfinite(p).all()) for p in clf.module_.parameters())
    return {"layers_checked": checked, "inactive_nonzero": nonzero,
            "weight_dtypes": sorted(dtypes), "all_finite": finite}


def _stop_group(proc: subprocess.Popen, wait: float = GRACE) -> None:
    """SIGTERM ``proc``'s process group, SIGKILL what is left of it after ``wait`` s.

    The step's alarm is cancelled first: it must not cut the stopping short.
    """
    signal.alarm(0)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    end = time.monotonic() + wait
    while time.monotonic() < end:
        proc.poll()
        try:
            os.killpg(proc.pid, 0)  # anyone left in the group?
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _run_child(cmd: list[str], seconds: int) -> str:
    """Run ``cmd`` from the repository root in a process group of its own; its output.

    Past ``seconds`` (or when the step's own alarm interrupts the wait) the whole group is
    stopped -- torchrun too, which stops its ranks -- so nothing the step started runs on
    into the next step, and :class:`StepTimeout` is raised. The output goes through a file,
    not a pipe, so a process that outlives the group cannot hold the step up.

    Raises
    ------
    StepTimeout
        The command ran past ``seconds``.
    RuntimeError
        The command exited with a non-zero status.
    """
    name = Path(cmd[2] if cmd[1] == "-m" else cmd[1]).name
    with tempfile.TemporaryFile(mode="w+") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try:
            proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            _stop_group(proc)
            log.seek(0)
            print(log.read()[-8000:])
            raise StepTimeout(f"{name} ran past {seconds} s and was stopped") from None
        except BaseException:
            _stop_group(proc)
            raise
        log.seek(0)
        output = log.read()
    print(output[-8000:])
    if proc.returncode != 0:
        raise RuntimeError(f"{name} exited {proc.returncode}")
    return output


# ------------------------------------------------------------------------------ steps
def step_tests(args: argparse.Namespace, out: Path) -> dict:
    """The CUDA-marked tests; on a CPU they are collected and skip."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-m", "cuda", "-p", "no:cacheprovider",
           str(ROOT / "tests" / "test_estimator.py"),
           str(ROOT / "tests" / "training" / "test_engine.py"),
           str(ROOT / "tests" / "sparse" / "test_engine.py")]
    output = _run_child(cmd, args.limit("tests"))
    return {"summary": output.strip().splitlines()[-1]}


class _Sequence(torch.nn.Module):
    """Rows of 40 features read as 10 steps of 4: an LSTM, self-attention over its states,
    a linear head (every weight masked)."""

    def __init__(self, input_shape: tuple[int, ...], n_classes: int) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(4, 32, batch_first=True)
        self.attention = torch.nn.MultiheadAttention(32, 4, batch_first=True)
        self.head = torch.nn.Linear(32, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states, _ = self.lstm(x.reshape(len(x), -1, 4))
        mixed, _ = self.attention(states, states, states, need_weights=False)
        return self.head(mixed.mean(dim=1))


def _sequence_fit(X: np.ndarray, y: np.ndarray, g: np.ndarray, device: torch.device,
                  epochs: int) -> dict[str, Any]:
    """A masked fit of :class:`_Sequence`: masks exact, and torch's warnings about
    non-contiguous recurrent weights counted."""
    from rest_fair import RESTClassifier

    clf = RESTClassifier(sparsity=0.9, max_epochs=epochs, device=str(device),
                         random_state=0, module=_Sequence)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clf.fit(X, y, groups=g)
        accuracy = float(clf.score(X, y))
    chunk = sum("contiguous chunk" in str(w.message) for w in caught)
    masked = sorted(name for name in clf.masks_ if not name.startswith("head"))
    return {"seconds": time.perf_counter() - start, "train_accuracy": accuracy,
            "masked_sequence_weights": masked, "non_contiguous_warnings": chunk,
            **_masked_weights_exact(clf)}


def step_precision(args: argparse.Namespace, out: Path) -> dict:
    from sklearn.datasets import make_classification

    from rest_fair import RESTClassifier

    n, width, epochs = (600, 32, 2) if args.smoke else (20000, 256, 10)
    X, y = make_classification(n, 40, n_informative=12, n_classes=4, random_state=0)
    X = X.astype(np.float32)
    g = (X[:, 0] > 1).astype(int)
    results = {}
    for precision in ("32", "bf16", "16-mixed"):
        if precision == "16-mixed" and args.device.type != "cuda":
            results[precision] = {"status": "not run: float16 autocast needs CUDA"}
            continue
        clf = RESTClassifier(sparsity=0.9, max_epochs=epochs, device=str(args.device),
                             precision=precision, random_state=0, sparse_compute="masked",
                             module_params={"hidden_layer_sizes": (width, width)})
        start = time.perf_counter()
        clf.fit(X, y, groups=g)
        results[precision] = {"seconds": time.perf_counter() - start,
                              "train_accuracy": float(clf.score(X, y)),
                              "best_epoch": int(clf.best_epoch_),
                              **_masked_weights_exact(clf)}
        print(precision, results[precision])
    sequence_epochs = 1 if args.smoke else 3
    results["lstm_attention"] = _sequence_fit(X[:4000], y[:4000], g[:4000], args.device,
                                              sequence_epochs)
    print("lstm_attention", results["lstm_attention"])
    bad = [p for p, r in results.items()
           if "inactive_nonzero" in r and (r["inactive_nonzero"] or not r["all_finite"])]
    if bad:
        raise RuntimeError(f"masks not exact or non-finite weights in {bad}: {results}")
    return results


def _plain_loop_images_per_s(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor,
                             batch: int, dtype: torch.dtype | None, device: torch.device,
                             skip: int) -> float:
    """A minimal hand-written training loop over the same data, one epoch."""
    model = model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    order = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
    times = []
    for start in range(0, len(X) - batch + 1, batch):
        index = order[start:start + batch]
        xb, yb = X[index].to(device, non_blocking=True), y[index].to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = loss_fn(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        times.append(time.perf_counter())
    gaps = np.diff(times[skip:])
    return batch / float(np.median(gaps))


def step_throughput(args: argparse.Namespace, out: Path) -> dict:
    import torchvision

    from rest_fair import RESTClassifier

    if args.smoke:
        model_name, size, batch, steps = "resnet18", 32, 4, 6
    else:
        model_name, size, batch, steps = "resnet50", 224, 64, 30
    skip = 2 if args.smoke else 5
    n = batch * steps
    gen = torch.Generator().manual_seed(0)
    X = torch.rand(n, 3, size, size, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    groups = (torch.rand(n, generator=gen) < 0.1).long().numpy()
    results: dict[str, dict] = {}
    for precision, dtype in (("32", None), ("bf16", torch.bfloat16)):
        row = {}
        torch.manual_seed(0)
        model = getattr(torchvision.models, model_name)(num_classes=10)
        row["plain_loop"] = _plain_loop_images_per_s(model, X, y, batch, dtype, args.device,
                                                     skip)
        del model
        for label, params in (("rest_fair_dense", {"sparsity": 0.0, "upweight": None}),
                              ("rest_fair_rest_0.9", {"sparsity": 0.9})):
            clock = _StepClock(args.device)
            # module_params "weights": the torchvision network, as the plain loop's (a
            # built-in name like "resnet18" is rest_fair's own network without it)
            clf = RESTClassifier(**params, module=model_name, module_params={"weights": None},
                                 max_epochs=1, batch_size=batch,
                                 lr=0.01, optimizer="sgd", momentum=0.9, precision=precision,
                                 validation_fraction=0.0, sparse_compute="masked",
                                 lr_scheduler="constant", device=str(args.device),
                                 random_state=0, callbacks=[clock.callback])
            clf.fit(X.numpy(), y.numpy(), groups=groups)
            row[label] = batch / clock.seconds_per_step(skip)
            del clf
        row["rest_vs_plain"] = row["rest_fair_rest_0.9"] / row["plain_loop"]
        row["dense_vs_plain"] = row["rest_fair_dense"] / row["plain_loop"]
        results[precision] = row
        print(precision, json.dumps(row))
        if args.device.type == "cuda":
            torch.cuda.empty_cache()
    return {"model": model_name, "image_size": size, "batch": batch, "steps": steps,
            "images_per_s": results}


def step_sparse_compute(args: argparse.Namespace, out: Path) -> dict:
    from rest_fair import RESTClassifier

    n, width, epochs = (512, (256, 256), 2) if args.smoke else (32768, (2048, 2048), 3)
    batch = 64 if args.smoke else 256
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 784)).astype(np.float32)
    y = rng.integers(0, 10, n)
    results = {}
    for sparsity in (0.9, 0.99):
        row = {}
        for mode in ("masked", "csr", "auto"):
            clock = _StepClock(args.device)
            clf = RESTClassifier(sparsity=sparsity, sparse_compute=mode, max_epochs=epochs,
                                 batch_size=batch, upweight=None, validation_fraction=0.0,
                                 device=str(args.device), random_state=0,
                                 module_params={"hidden_layer_sizes": width},
                                 callbacks=[clock.callback])
            clf.fit(X, y)
            row[f"{mode}_ms_per_step"] = 1000 * clock.seconds_per_step(skip=n // batch)
            if mode == "auto":
                row["auto_chose_csr_layers"] = list(clf.sparse_compute_layers_)
        faster = "csr" if row["csr_ms_per_step"] < row["masked_ms_per_step"] else "masked"
        row["faster"] = faster
        row["auto_chose"] = "csr" if row["auto_chose_csr_layers"] else "masked"
        row["auto_chose_the_faster"] = row["auto_chose"] == faster
        results[str(sparsity)] = row
        print(sparsity, json.dumps(row))
    return results


def step_ddp(args: argparse.Namespace, out: Path) -> dict:
    """One-rank DDP against the plain fit, in one torchrun job (bench_ddp.py)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "ddp.json"
        cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_ddp.py"),
               "--device", args.device.type, "--ranks", "1", "--json", str(report)]
        if args.smoke:
            cmd += ["--repeats", "1", "--epochs", "2", "--n-samples", "256",
                    "--comm-steps", "2"]
        else:
            cmd += ["--repeats", "3", "--epochs", "3"]
        _run_child(cmd, args.limit("ddp"))
        return json.loads(report.read_text())


def step_colored_fashion_mnist(args: argparse.Namespace, out: Path) -> dict:
    """The bench's protocol: groups = aligned / conflicting, worst group over the two."""
    from rest_fair import RESTClassifier
    from rest_fair.datasets import make_colored_fashion_mnist

    deadline = time.monotonic() + args.limit("colored_fashion_mnist") - 30
    data = make_colored_fashion_mnist(
        conflict_ratio=0.01, random_state=0, root=args.fashion_mnist,
        split_sizes=(2000, 300, 500) if args.smoke else None)
    epochs = 2 if args.smoke else args.epochs
    methods = {"erm": {"sparsity": 0.0, "upweight": None},
               "dense_reweighting": {"sparsity": 0.0, "upweight": "balanced"},
               "rest_0.9": {"sparsity": 0.9, "upweight": "balanced"},
               "rest_0.99": {"sparsity": 0.99, "upweight": "balanced"}}
    runs: list[dict] = []
    for seed in (41,) if args.smoke else (41, 42, 43):
        for name, params in methods.items():
            if runs and time.monotonic() + 1.2 * max(r["seconds"] for r in runs) > deadline:
                return {"epochs": epochs, "summary": data.summary(), "runs": runs,
                        "stopped": "time limit"}
            clf = RESTClassifier(**params, module="cnn", max_epochs=epochs, batch_size=256,
                                 lr=0.01, optimizer="sgd", momentum=0.9,
                                 device=str(args.device), random_state=seed)
            start = time.perf_counter()
            try:
                clf.fit(data.X_train, data.y_train, groups=data.conflict_train,
                        validation_data=(data.X_valid, data.y_valid, data.conflict_valid))
            except StepTimeout:  # the fits that finished are kept
                return {"epochs": epochs, "summary": data.summary(), "runs": runs,
                        "stopped": f"time limit: the {name} fit of seed {seed} was cut off"}
            seconds = time.perf_counter() - start
            correct = np.asarray(clf.predict(data.X_test)) == data.y_test
            accuracies = [float(correct[~data.conflict_test].mean()),
                          float(correct[data.conflict_test].mean())]
            runs.append({"method": name, "seed": seed, "seconds": seconds,
                         "unbiased_test_accuracy": float(correct.mean()),
                         "worst_group_accuracy": min(accuracies),
                         "best_epoch": int(clf.best_epoch_)})
            print(json.dumps(runs[-1]))
    return {"epochs": epochs, "summary": data.summary(), "runs": runs, "stopped": None}


STEPS: dict[str, tuple[Callable[[argparse.Namespace, Path], dict], int]] = {
    # name: (function, time limit in seconds on the GPU machine)
    "tests": (step_tests, 90),
    "precision": (step_precision, 60),
    "throughput": (step_throughput, 120),
    "sparse_compute": (step_sparse_compute, 60),
    "ddp": (step_ddp, 60),
    "colored_fashion_mnist": (step_colored_fashion_mnist, 150),
}


# ------------------------------------------------------------------------------- main
def _environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(),
           "device": str(device), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    else:
        env["threads"] = torch.get_num_threads()
    return env


class StepTimeout(Exception):
    """A step ran past its time limit."""


@contextlib.contextmanager
def _time_limit(name: str, seconds: int, grace: int = GRACE) -> Any:
    """Raise :class:`StepTimeout` in the step once ``seconds`` plus ``grace`` have passed
    (the grace lets the steps that stop a child process at the limit do it themselves)."""

    def expired(signum: int, frame: Any) -> None:
        raise StepTimeout(f"step {name!r} ran past its time limit of {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds + grace)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``(dotted key, value)`` for every leaf of nested dicts; lists of dicts by index."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list) and any(isinstance(v, dict) for v in value):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return [(prefix, value)]
    rows = []
    for key, item in items:
        rows += _flatten(item, f"{prefix}.{key}" if prefix else str(key))
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def summary_markdown(results: dict[str, Any]) -> str:
    """``results.json`` as Markdown: the environment, then one table of numbers per step."""
    lines = ["# GPU checks", "", f"`{results.get('command', '')}`", ""]
    lines += [f"- {key}: {_cell(value)}" for key, value in results["environment"].items()]
    for name, entry in results["steps"].items():
        lines += ["", f"## {name}: {entry['status']} ({entry['wall_seconds']} s)", ""]
        if "error" in entry:
            lines += [f"`{_cell(entry['error'])}`", ""]
        rows = [(k, v) for k, v in _flatten(entry)
                if k not in ("status", "error", "traceback", "wall_seconds")]
        if rows:
            lines += ["| what | value |", "| --- | --- |"]
            lines += [f"| {key} | {_cell(value)} |" for key, value in rows]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    """Run the chosen steps; write results.json and summary.md after each; the number of
    steps that failed or were skipped."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"environment": _environment(args.device),
                               "command": " ".join(sys.argv), "steps": {}}
    (out / "steps.log").write_text("")
    failures = 0
    for name in args.steps:
        fn, _ = STEPS[name]
        limit = args.limit(name)
        print(f"== {name} (limit {limit} s)", flush=True)
        log = io.StringIO()
        start = time.perf_counter()
        if limit < 1:
            entry = {"status": "skipped",
                     "error": f"no time left in the budget of {args.budget_seconds} s"}
        else:
            try:
                with contextlib.redirect_stdout(log), _time_limit(name, limit):
                    value = fn(args, out)
                entry = {"status": "ok", **value}
            except Exception as exc:  # every step is recorded, the others still run
                entry = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                         "traceback": traceback.format_exc()[-3000:]}
        failures += entry["status"] != "ok"
        entry["wall_seconds"] = round(time.perf_counter() - start, 2)
        with open(out / "steps.log", "a") as steps_log:
            steps_log.write(f"== {name}: {entry['status']} in {entry['wall_seconds']} s "
                            f"(limit {limit} s)\n{log.getvalue()}{entry.get('traceback', '')}\n")
        results["steps"][name] = entry
        (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
        (out / "summary.md").write_text(summary_markdown(results))
        print(f"   {entry['status']} in {entry['wall_seconds']} s"
              + (f": {entry['error']}" if "error" in entry else ""), flush=True)
    return failures


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="folder for results.json, summary.md and steps.log")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                        help="cuda (default) or cpu")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes: check that every step runs (minutes on a CPU)")
    parser.add_argument("--steps", nargs="+", default=list(STEPS), choices=list(STEPS))
    parser.add_argument("--epochs", type=int, default=3,
                        help="epochs of the Colored Fashion-MNIST fits (default 3)")
    parser.add_argument("--fashion-mnist", default=os.environ.get("REST_FAIR_FASHION_MNIST"),
                        help="folder with the Fashion-MNIST idx files (default: Debian's)")
    parser.add_argument("--limit-scale", type=float, default=1.0,
                        help="multiply every step's time limit and the budget (e.g. 3 on a "
                             "slow CPU)")
    parser.add_argument("--budget", type=float, default=540.0,
                        help="seconds for all the steps together, from the start (default 540)")
    args = parser.parse_args(argv)
    for option in ("limit_scale", "budget"):
        value = getattr(args, option)
        if not (np.isfinite(value) and value > 0):
            parser.error(f"--{option.replace('_', '-')} must be a positive number; got {value}")
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1; got {args.epochs}")
    args.device = torch.device(args.device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch.cuda.is_available() is False")
    scale = args.limit_scale * (20 if args.smoke else 1)
    args.budget_seconds = round(args.budget * scale)
    deadline = time.monotonic() + args.budget * scale

    def limit(name: str) -> int:
        """The step's own limit, or the budget left less the grace if that is smaller
        (below 1: no time left)."""
        left = int(deadline - time.monotonic()) - GRACE
        return min(max(1, int(STEPS[name][1] * scale)), left)

    args.limit = limit
    return args


if __name__ == "__main__":
    sys.exit(1 if run(parse_args()) else 0)
