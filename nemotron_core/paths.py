"""Where the package's shipped assets and the repository's config tree live."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ASSETS_DIR = PACKAGE_DIR / "assets"
# The recipes' Hydra config tree (a source checkout; recipes are run from it).
CONF_DIR = PACKAGE_DIR.parent / "conf"


def asset_path(rel: str) -> Path:
    """Absolute path of a shipped asset, e.g. `asset_path("tokenizer")` (not checked for existence:
    whoever opens it reports a missing file with the config key that named it)."""
    return ASSETS_DIR / rel
