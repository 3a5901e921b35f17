"""The tree passes `ruff check` (rules in ruff.toml); ruff comes with the `[dev]` extra."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from nemotron_core.paths import PACKAGE_DIR


def test_ruff_check_passes():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    proc = subprocess.run([ruff, "check", "."], cwd=PACKAGE_DIR.parent, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:]
