"""Checkpoints: Hugging Face NemotronH import/export (`hf.py`)."""

# DCP training checkpoints (`dcp.py`): save/resume, weights-only load for `checkpoint.load`, HF export.
from nemotron_core.checkpoint.dcp import (  # noqa: E402
    TrainerState,
    checkpoint_dir,
    export_hf,
    find_latest_checkpoint,
    load_checkpoint,
    load_model_weights,
    resolve_resume,
    save_checkpoint,
)

__all__ = [
    "TrainerState",
    "checkpoint_dir",
    "export_hf",
    "find_latest_checkpoint",
    "load_checkpoint",
    "load_model_weights",
    "resolve_resume",
    "save_checkpoint",
]
