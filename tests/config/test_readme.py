"""The README's set-up and test commands are exactly what CI runs."""

from __future__ import annotations

import re

from nemotron_core.paths import PACKAGE_DIR

ROOT = PACKAGE_DIR.parent


def _block_after(readme: str, heading: str) -> str:
    section = readme.split(f"## {heading}", 1)[1]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1).strip()


def test_ci_runs_the_readme_commands_verbatim():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    setup = _block_after(readme, "Set up")
    tests = _block_after(readme, "Run the tests")
    ci_lines = [line for line in ci.splitlines() if line and not line.startswith("#")]
    assert setup in ci_lines and tests in ci_lines
    assert ci_lines.index(setup) < ci_lines.index(tests) == len(ci_lines) - 1


def test_setup_installs_cpu_torch_before_the_package():
    readme = (ROOT / "README.md").read_text()
    setup = _block_after(readme, "Set up")
    assert setup.index("pip install torch==2.13.0") < setup.index('pip install -e ".[dev]"')
    cfg = (ROOT / "setup.cfg").read_text()
    assert "torch>=2.11" in cfg and "omegaconf>=2.3,<2.4" in cfg
