"""The ``rest-fair`` command line: a registry of subcommands.

Each module of :data:`SUBCOMMANDS` exposes ``add_parser(subparsers)``, which adds one
parser to the argparse subparsers and calls ``parser.set_defaults(func=...)`` with a
function taking the parsed namespace and returning an exit status. Every listed module is
imported to build ``rest-fair --help``, so it must be cheap to import (no torch, wilds or
matplotlib at import time); one that is not present (e.g. an optional part not yet
installed) is skipped.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ._version import __version__

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

#: Subcommand modules, in the order of ``rest-fair --help``.
SUBCOMMANDS: tuple[str, ...] = (
    "rest_fair.benchmarks.cli",  # rest-fair bench
    "rest_fair.wilds.cli",  # rest-fair wilds (checks for its extra when it runs)
)


def _load(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # skip only a missing subcommand module, never hide a broken import inside it
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            return None
        raise


def build_parser(modules: Sequence[str] = SUBCOMMANDS) -> argparse.ArgumentParser:
    """The ``rest-fair`` parser with every available subcommand registered.

    Parameters
    ----------
    modules : sequence of str
        Module names exposing ``add_parser(subparsers)``.

    Returns
    -------
    argparse.ArgumentParser
    """
    parser = argparse.ArgumentParser(
        prog="rest-fair",
        description="Group-robust sparse neural networks (REST): benchmarks and tools.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in modules:
        module = _load(name)
        if module is not None:
            module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rest-fair`` console script.

    Parameters
    ----------
    argv : sequence of str or None
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status.
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # recorded by subcommands for provenance
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    return int(func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
