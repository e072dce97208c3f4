"""The import contracts of ``[tool.importlinter]`` in pyproject.toml (layers, no cycle)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    env = dict(os.environ, PYTHONPATH=str(ROOT))  # analyse this checkout's rest_fair
    result = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command as main; main()",
         "--no-cache", "--no-logo"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
