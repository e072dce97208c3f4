"""The tests of rest_fair.wilds run with the real wilds package; without it, every file here
is skipped, and none is imported (they import wilds)."""

from __future__ import annotations

import pytest

from rest_fair.wilds import import_wilds

try:  # through our guard: no PyPI version-check thread
    import_wilds()
    WILDS_MISSING = False
except ImportError:  # pragma: no cover - the wilds extra is part of CI
    WILDS_MISSING = True


class _NeedsWilds(pytest.Module):
    """A test file of this folder, reported as skipped instead of imported."""

    def collect(self):
        pytest.skip("needs the optional extra rest-fair[wilds]")


def pytest_pycollect_makemodule(module_path, parent):
    if WILDS_MISSING:
        return _NeedsWilds.from_parent(parent, path=module_path)
    return None
