"""Start-of-run chores every entry point shares: logging, the resolved config, seeding."""

from __future__ import annotations

import logging
import os
import random
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nemotron_core.utils.atomic import atomic_write_text

log = logging.getLogger("nemotron_core")


def setup_logging(level: str = "INFO", *, rank: int = 0) -> None:
    """Console logging on rank 0 at `level`; other ranks log warnings and errors only.

    Under `@hydra.main` Hydra has already installed its console and `<job>.log` handlers: only the
    level is set then. Outside Hydra a console handler is added once.
    """
    root = logging.getLogger()
    root.setLevel(level if rank == 0 else "WARNING")
    if not root.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter(f"[%(asctime)s][rank{rank}][%(name)s][%(levelname)s] %(message)s"))
        root.addHandler(h)


def resolve_config(cfg: DictConfig) -> dict[str, Any]:
    """The fully resolved config as plain containers; a missing mandatory value (`???`) raises
    omegaconf's MissingMandatoryValue naming its key, before any work starts."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]


def log_and_save_config(cfg: DictConfig, *, out_dir: str | os.PathLike, job_name: str, rank: int = 0) -> dict[str, Any]:
    """Resolve `cfg`, log it, and (rank 0) save it as `<out_dir>/<job_name>.resolved.yaml`."""
    resolved = resolve_config(cfg)
    text = OmegaConf.to_yaml(OmegaConf.create(resolved))
    log.info("resolved config (%s):\n%s", job_name, text)
    if rank == 0:
        atomic_write_text(Path(out_dir) / f"{job_name}.resolved.yaml", text)
    return resolved


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) from one integer."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
