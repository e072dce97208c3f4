"""Examples of the documentation run as printed: the landing page's ten lines on the embedded
digits, the routing example of the fairness page, the callback example of the long-runs page,
and every other Python block of README.md and docs/*.md that runs on a tiny table; the blocks
that need more (data on disk, a download, a cluster) are listed with the reason. The ``>>>``
examples of the package's docstrings run as doctests."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S)


PAGES = ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]

# Blocks run below on a tiny table, by page and a line of theirs: the code the page shows
# before the block (names it uses from an earlier block or from the reader's own data).
TINY = {
    ("README.md", "clf.sparsity_report()"): "",
    ("docs/estimator.md", 'optimizer="adam", lr=1e-3'): "",
    ("docs/estimator.md", 'authors_recipe("colored_mnist")'): "",
    ("docs/estimator.md", "class PrintWGA"): "from rest_fair import RESTClassifier",
    ("docs/efficiency.md", "clf.export_sparse()"): "",
    ("docs/fairness.md", "report.by_group"): (
        "from rest_fair import RESTClassifier\n"
        "clf = RESTClassifier(max_epochs=2).fit(X, y, groups=g)\n"
        "y_pred = clf.predict(X_test)"),
    ("docs/fairness.md", "ExponentiatedGradient("): "from rest_fair import RESTClassifier",
    ("docs/fairness.md", "ThresholdOptimizer("): (
        "from rest_fair import RESTClassifier\nfrom rest_fair.metrics import fairness_report"),
    ("docs/long_runs.md", 'Checkpoint("runs/waterbirds-s0"'): "",
    ("docs/benchmarks.md", 'StudyMethod("rest_recipe_0.9"'): (
        "from rest_fair.recipes import authors_recipe\n"
        "def recipe():\n    return authors_recipe('colored_mnist')"),
    ("docs/wilds.md", "hf:distilbert-base-uncased"): "from rest_fair import RESTClassifier",
}
# The other blocks, and why they are not run here.
NOT_RUN = {
    ("docs/index.md", "make_colored_mnist(conflict_ratio=0.05)"): "run by a test above",
    ("docs/fairness.md", "set_fit_request"): "run by a test above",
    ("docs/long_runs.md", "class LayerDensity"): "run by a test above",
    ("docs/benchmarks.md", "make_colored_fashion_mnist("): "54,000 images, 100 epochs",
    ("docs/benchmarks.md", "load_dfa("): "a DFA release on disk",
    ("docs/benchmarks.md", 'run_sweep(config, "out/quick"'): "a 12-run sweep of 30 s",
    ("docs/reproducing_wilds.md", "extract_features("): "Waterbirds and ImageNet weights",
    ("docs/scaling.md", "load_my_data()"): "the reader's data, under torchrun",
    ("docs/scaling.md", 'scheduler="tcp://SCHEDULER_HOST:8786"'): "a Dask cluster",
    ("docs/scaling.md", 'backend="dask"'): "a Dask cluster",
    ("docs/wilds.md", 'load_wilds("waterbirds", root_dir="data")'): "Waterbirds on disk",
    ("docs/wilds.md", "TfidfVectorizer("): "CivilComments on disk",
    ("docs/writing_docs.md", "Title of the example"): "the template of a gallery script",
}


def _block(page: str, line: str) -> str:
    (block,) = [b for b in _python_blocks(ROOT / page) if line in b]
    return block


def test_every_python_block_of_the_docs_is_run_or_says_why_not():
    listed = set(TINY) | set(NOT_RUN)
    for page in PAGES:
        for block in _python_blocks(ROOT / page):
            keys = [key for key in listed if key[0] == page and key[1] in block]
            assert len(keys) == 1, (f"a Python block of {page} is matched by {keys}: add it "
                                    f"to TINY or NOT_RUN:\n{block}")
    for page, line in listed:
        _block(page, line)  # still there, once


@pytest.mark.slow
@pytest.mark.parametrize(("page", "line"), sorted(TINY))
def test_doc_example_runs_on_a_tiny_table(page, line, tmp_path, monkeypatch):
    """The block as printed, on 200 rows of 4 features with a binary group (files it writes
    go to a temporary folder)."""
    import warnings

    import numpy as np

    rng = np.random.default_rng(0)

    def table(n):
        g = rng.integers(0, 2, n)
        X = rng.normal(size=(n, 4)).astype(np.float32)
        X[:, 1] += g
        return X, (X[:, 0] + 0.8 * g > 0.4).astype(int), g

    (X, y, g), (X_test, y_test, g_test), (X_val, y_val, g_val) = table(200), table(200), table(100)
    namespace = {"X": X, "y": y, "g": g, "groups": g, "a": g, "X_train": X, "y_train": y,
                 "bias_attribute_train": g, "X_val": X_val, "y_val": y_val,
                 "bias_attribute_val": g_val, "X_test": X_test, "y_test": y_test,
                 "sex": g_test, "a_test": g_test}
    monkeypatch.chdir(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # small validation groups
        exec(TINY[page, line], namespace)
        exec(compile(_block(page, line), page, "exec"), namespace)


@pytest.mark.slow
def test_landing_page_example_runs_and_prints_a_worst_group_accuracy():
    (block,) = _python_blocks(ROOT / "docs" / "index.md")
    assert len(block.strip().splitlines()) <= 10
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(block, "docs/index.md", "exec"), {})
    accuracy = float(printed.getvalue().strip())
    # 10 classes: chance is 0.1; the fit learns (0.47 on the machines of 2026-12)
    assert 0.25 <= accuracy <= 1.0


@pytest.mark.slow
def test_fairness_page_routing_example_runs_with_a_binary_sensitive_attribute():
    """The metadata-routing example of docs/fairness.md, on a table with a binary attribute
    (the common case: it must not split by that attribute)."""
    import numpy as np
    import sklearn

    block = next(b for b in _python_blocks(ROOT / "docs" / "fairness.md")
                 if "set_fit_request" in b)
    rng = np.random.default_rng(0)
    g = rng.integers(0, 2, 300)
    X = rng.normal(size=(300, 4)).astype(np.float32)
    X[:, 1] += g
    y = (X[:, 0] + 0.8 * g > 0.4).astype(int)
    namespace = {"X": X, "y": y, "g": g}
    with sklearn.config_context():  # the block enables routing for the process
        try:
            exec(compile(block, "docs/fairness.md", "exec"), namespace)
        finally:
            sklearn.set_config(enable_metadata_routing=False)
    assert sorted(namespace["search"].best_estimator_.groups_) == [0, 1]
    assert len(namespace["scores"]["test_score"]) == 5


@pytest.mark.slow
def test_long_runs_callback_example_adds_the_key_its_docstring_names():
    import numpy as np

    from rest_fair import RESTClassifier

    block = next(b for b in _python_blocks(ROOT / "docs" / "long_runs.md") if "LayerDensity" in b)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    g = (X[:, 1] > 0).astype(int)
    namespace = {"RESTClassifier": RESTClassifier, "X": X, "y": y, "g": g}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(block, "docs/long_runs.md", "exec"), namespace)
    (named,) = re.findall(r'history_\[-1\]\["(density/[^"]+)"\]', block)
    assert named in namespace["clf"].history_[-1]


DOCTEST_MODULES = sorted(
    ".".join(path.relative_to(ROOT).with_suffix("").parts)
    for path in (ROOT / "rest_fair").rglob("*.py") if ">>> " in path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_docstring_examples_print_what_they_show(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), report=True,
                             optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
