"""benchmarks/bench_fit_phases.py times a small fit's phases and puts the library back."""

from __future__ import annotations

import re

import pytest

from tests._support.scripts import load_benchmark

pytest.importorskip("torch")


def test_fit_phases_benchmark_counts_the_steps_and_restores_what_it_timed(capsys):
    from rest_fair import RESTClassifier
    from rest_fair.sparse import csr_engine, kernels
    from rest_fair.training import precision

    fit, pack, link = RESTClassifier.fit, kernels.pack, csr_engine.link_chains
    step = precision.optimizer_step
    bench = load_benchmark("bench_fit_phases")
    bench.main(["--hidden", "32", "32", "--samples", "640", "--epochs", "2", "--batch", "64",
                "--fits", "1", "--threads", "1", "--compare-dense", "--compare-layer-by-layer",
                "--compare-torch-step"])
    printed = capsys.readouterr().out
    assert re.search(r"^\| fit \| \d+\.\d \| 1 \| 100\.0 \| \d+ \|$", printed, re.M)
    # 576 training rows (10 % held out) in batches of 64, two epochs
    assert re.search(r"^\| · · training steps \| \d+\.\d \| 18 \| ", printed, re.M)
    assert re.search(r"^\| · · validation \| \d+\.\d \| 2 \| ", printed, re.M)
    for label in ("loss", "backward passes", "optimizer steps"):
        assert re.search(rf"^\| · · · {label} \| \d+\.\d \| 18 \| ", printed, re.M), label
    # the 18 training batches and the validation batches
    for label in ("· · gathering the batches", "· · · forward passes"):
        found = re.search(rf"^\| {label} \(training and validation\) \| \d+\.\d \| (\d+) \| ",
                          printed, re.M)
        assert found and int(found[1]) > 18, label
    assert re.search(r"sparse \d+ ms, \d+\.\dx dense$", printed, re.M)
    assert re.search(r"chains of CSR layers \d+ ms, layer by layer \d+ ms, \d\.\d{3}x$",
                     printed, re.M)
    assert re.search(r"the loop's SGD step \d+ ms, optimizer.step\(\) \d+ ms, \d\.\d{3}x$",
                     printed, re.M)
    assert RESTClassifier.fit is fit and kernels.pack is pack
    assert csr_engine.link_chains is link and precision.optimizer_step is step
