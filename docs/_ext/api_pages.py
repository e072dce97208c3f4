"""Write the API reference pages of the modules listed in ``api_modules`` (conf.py).

Each module gets ``api/<module>.rst``: the module docstring, then an autosummary table of
the names in its ``__all__`` with one generated page per name. A name that is the same
object as one already documented under an earlier module (a re-export, e.g.
``rest_fair.fairness.fairness_report`` and ``rest_fair.metrics.fairness_report``) is listed
with a link to that page instead of being documented twice. Other submodules of the
package whose ``__all__`` has names that no listed module exports get a page too, after
their closest listed parent. ``api/index.rst`` lists the modules with the first line of
their docstrings.

The pages are written when the configuration is read, before autosummary generates the
per-name stubs from them, so a new public name appears in the reference without editing
any page. Everything under ``api/`` is generated (and ignored by git).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import sys
from pathlib import Path
from typing import Any

from sphinx.pycode import ModuleAnalyzer, PycodeError
from sphinx.util import logging

logger = logging.getLogger(__name__)

API_DIR = "api"

_NO_ALL = "API module {name!r} (api_modules in conf.py) has no __all__ to document."
_MISSING = "{module}.__all__ lists {name!r}, which the module does not have."
_NO_COMMENT = (
    "Public constant {name} has no documentation: put a '#: ...' comment on the line(s) "
    "above its assignment in the module that defines it."
)
#: Values whose repr is at most this long are shown on the constant's page.
MAX_VALUE_REPR = 100


def _summary(module: Any) -> str:
    doc = inspect.getdoc(module) or ""
    return doc.strip().split("\n\n")[0].replace("\n", " ")


def _title(text: str, char: str = "=") -> str:
    return f"{text}\n{char * len(text)}\n"


def module_page(
    name: str, documented: dict[tuple[str, int], str]
) -> tuple[str, list[str]]:
    """reST of one module page and the names documented on it.

    ``documented`` maps (name, id(object)) to the qualified name of the page documenting
    that object; it is updated with the names of this module.
    """
    module = importlib.import_module(name)
    names = getattr(module, "__all__", None)
    if names is None:
        raise ValueError(_NO_ALL.format(name=name))
    own, linked = [], []
    for public in names:
        if public.startswith("__"):  # __version__ and friends
            continue
        try:
            obj = getattr(module, public)
        except AttributeError:
            raise ValueError(_MISSING.format(module=name, name=public)) from None
        key = (public, id(obj))
        if key in documented:
            linked.append(documented[key])
        else:
            documented[key] = f"{name}.{public}"
            own.append(public)
    lines = [
        f".. _api-{name}:\n",
        _title(name),
        f".. automodule:: {name}\n   :no-members:\n",
        f".. currentmodule:: {name}\n",
    ]
    if own:
        lines.append(".. autosummary::\n   :toctree: generated/\n\n"
                     + "".join(f"   {public}\n" for public in own))
    if linked:
        links = ", ".join(f":obj:`~{target}`" for target in linked)
        lines.append(f"Also available from this module: {links}.\n")
    return "\n".join(lines), own


def public_modules(package: str) -> list[str]:
    """Every importable module of ``package`` without a private (``_``) part in its name."""
    root = importlib.import_module(package)
    names = [package]
    for info in pkgutil.walk_packages(getattr(root, "__path__", []), package + "."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


def plan_pages(modules: list[str]) -> list[tuple[str, list[str], str]]:
    """The module pages in order: ``(module, documented names, reST)``.

    First the modules of ``modules``, then any other public module of the same package
    with names in its ``__all__`` that none of them exports (placed after its closest
    listed parent), so that every public name gets a page.
    """
    documented: dict[tuple[str, int], str] = {}
    pages = {name: module_page(name, documented) for name in modules}
    extra: dict[str, list[str]] = {name: [] for name in modules}
    for name in public_modules(modules[0].split(".")[0]):
        if name in pages or getattr(importlib.import_module(name), "__all__", None) is None:
            continue
        text, own = module_page(name, documented)
        if own:
            parent = max((m for m in modules if name.startswith(m + ".")), key=len,
                         default=modules[-1])
            pages[name] = (text, own)
            extra[parent].append(name)
    order = [n for name in modules for n in (name, *extra[name])]
    return [(name, pages[name][1], pages[name][0]) for name in order]


def write_api_pages(srcdir: str | Path, modules: list[str]) -> dict[str, list[str]]:
    """Write ``api/index.rst`` and one page per module; returns module -> documented names.

    Files whose content did not change are left alone, so that Sphinx does not re-read
    them on an incremental build.
    """
    out = Path(srcdir) / API_DIR
    out.mkdir(exist_ok=True)
    pages = plan_pages(modules)
    planned = {f"{name}.rst" for name, _, _ in pages} | {"index.rst"}
    for stale in out.glob("*.rst"):  # pages of modules that are gone
        if stale.name not in planned:
            stale.unlink()
    rows = []
    for name, _, text in pages:
        _write_if_changed(out / f"{name}.rst", text)
        rows.append(f"   * - :ref:`{name} <api-{name}>`\n"
                    f"     - {_summary(importlib.import_module(name))}\n")
    index = (
        _title("API reference")
        + "\nEvery public name of ``rest_fair``, by module (the names in each module's "
        "``__all__``).\n\n"
        ".. list-table::\n   :header-rows: 1\n   :widths: 30 70\n\n"
        "   * - Module\n     - Contents\n"
        + "".join(rows)
        + "\n.. toctree::\n   :hidden:\n\n"
        + "".join(f"   {name}\n" for name, _, _ in pages)
    )
    _write_if_changed(out / "index.rst", index)
    return {name: own for name, own, _ in pages}


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def constant_doc(qualname: str, obj: Any) -> list[str] | None:
    """The ``#:`` comment documenting a module-level constant, or None.

    A module re-exports constants of other modules of its package, and the comment sits
    where the constant is assigned, so the module and then every loaded module of the
    package holding the same object are searched.
    """
    modname, attr = qualname.rsplit(".", 1)
    root = modname.partition(".")[0]
    candidates = [
        modname,
        *sorted(
            name
            for name, module in list(sys.modules.items())
            if name.startswith(root + ".") and getattr(module, attr, None) is obj
        ),
    ]
    for candidate in candidates:
        try:
            docs = ModuleAnalyzer.for_module(candidate).find_attr_docs()
        except PycodeError:
            continue
        if ("", attr) in docs:
            return [line for line in docs[("", attr)] if line is not None]
    return None


#: ``:term:`x``` and ``:ref:`text <label>``` in docstrings written for scikit-learn's own site.
_SKLEARN_ROLE = re.compile(r":(?:term|ref):`([^`<]+?)(?:\s*<[^`>]+>)?`")


def _on_docstring(
    app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    # Methods scikit-learn generates on our estimators (``set_fit_request``, ...) refer to
    # its glossary and user guide, which this site does not have: keep the words only.
    if str(getattr(obj, "__module__", "")).startswith("sklearn."):
        lines[:] = [_SKLEARN_ROLE.sub(r"\1", line) for line in lines]
        return
    # Without this a constant would show the docstring of its type (e.g. ``tuple``).
    if what != "data":
        return
    doc = constant_doc(name, obj)
    if doc is None:
        logger.warning(_NO_COMMENT.format(name=name), type="api_pages")
        doc = []
    value = repr(obj)
    if len(value) <= MAX_VALUE_REPR and "\n" not in value:
        doc = [*doc, "", f"Value: ``{value}``"]
    lines[:] = doc


def _on_config_inited(app: Any, config: Any) -> None:
    write_api_pages(app.srcdir, list(config.api_modules))


def setup(app: Any) -> dict[str, Any]:
    """Register ``api_modules``, write the pages once the configuration is read, and
    document constants from their ``#:`` comments."""
    app.add_config_value("api_modules", [], "env")
    app.connect("config-inited", _on_config_inited)
    # before numpydoc (priority 500) reformats the docstring
    app.connect("autodoc-process-docstring", _on_docstring, priority=100)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
