"""Sphinx configuration of the rest_fair documentation.

Build with ``make docs`` (HTML in ``docs/_build/html``). The build is offline: no
intersphinx, no downloads; the gallery runs the scripts of ``examples/`` on the CPU.
See ``docs/writing_docs.md`` for adding pages, API modules and examples.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
# Document the checkout the docs belong to, not another installed copy.
if (ROOT / "rest_fair" / "__init__.py").exists():
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "_ext"))

import rest_fair  # noqa: E402

project = "rest_fair"
author = "rest_fair developers"
copyright = "rest_fair developers"
release = rest_fair.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
    "api_pages",
]

# Public modules of the API reference, in order. A re-exported name is documented under
# the first module listing it; other submodules with public names of their own are added
# after their package (docs/_ext/api_pages.py).
api_modules = [
    "rest_fair",
    "rest_fair.callbacks",
    "rest_fair.exceptions",
    "rest_fair.training",
    "rest_fair.persistence",
    "rest_fair.models",
    "rest_fair.objectives",
    "rest_fair.reweighting",
    "rest_fair.jtt",
    "rest_fair.metrics",
    "rest_fair.fairness",
    "rest_fair.sparse",
    "rest_fair.efficiency",
    "rest_fair.datasets",
    "rest_fair.experiments.runner",
    "rest_fair.experiments.run",
    "rest_fair.benchmarks",
    "rest_fair.wilds",
    "rest_fair.cli",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_templates", "Thumbs.db", ".DS_Store", "**.ipynb"]
templates_path = ["_templates"]

# -- Markdown (MyST) ----------------------------------------------------------------------
# GitHub-style heading anchors, so that links such as benchmarks.md#presets keep working
# both on GitHub and in the built site.
myst_heading_anchors = 4
myst_enable_extensions = ["colon_fence"]

# -- API: autodoc, autosummary, numpydoc --------------------------------------------------
autosummary_generate = True
autodoc_typehints = "none"  # the numpydoc docstrings state the types
autodoc_member_order = "bysource"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True

# -- Gallery -------------------------------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    # every script in examples/ is run, not only plot_*.py -- except the embedding-mode
    # example, which extracts ResNet-50 features (minutes on a CPU): it is left out
    "filename_pattern": r".*\.py$",
    "ignore_pattern": r"wilds_embedding_mode\.py",
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "remove_config_comments": True,
    "image_scrapers": ("matplotlib",),
    "matplotlib_animations": False,
    "show_memory": False,
    "min_reported_time": 1,
    "backreferences_dir": None,
}
# `make docs-noplot` / `-D plot_gallery=0`: the gallery pages without running the scripts.

# Headless matplotlib in the gallery; torch threads as the test machines have.
os.environ.setdefault("MPLBACKEND", "Agg")
warnings.filterwarnings(
    "ignore", message="Matplotlib is currently using agg", category=UserWarning
)

# -- HTML ----------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"rest_fair {release}"
html_static_path: list[str] = []
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "header_links_before_dropdown": 5,
    "secondary_sidebar_items": ["page-toc", "sourcelink"],
}
html_show_sourcelink = False
html_last_updated_fmt = None
