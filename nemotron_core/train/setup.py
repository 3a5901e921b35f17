"""What every stage's train.py builds the same way: the starting model and the compute dtype."""

from __future__ import annotations

import torch

from nemotron_core.checkpoint import load_model_weights
from nemotron_core.model.nano3 import build_nano3
from nemotron_core.tokenization import TokenizerFingerprint, check_tokenizer_match


def build_model(model_cfg, *, load: str | None, seed: int, tokenizer_fp: TokenizerFingerprint):
    """A fresh init of `model_cfg` (seeded: the same on every rank), or the weights of
    `checkpoint.load` (an HF directory or a DCP checkpoint made with the same tokenizer vocab).
    Returns (model, parent) where parent describes the loaded checkpoint for lineage (or None)."""
    model = build_nano3(model_cfg, seed=seed)
    parent = None
    if load:
        info = load_model_weights(load, model)
        if info["tokenizer"] is not None:
            check_tokenizer_match(info["tokenizer"], tokenizer_fp, expected_from=f"checkpoint.load={load}", actual_from="the data")
        parent = {"checkpoint": info["path"], "step": info["step"], "lineage": info["lineage"]}
    return model, parent


def autocast_dtype_for(dtype: str, device: torch.device) -> torch.dtype | None:
    """`train.dtype` -> the autocast dtype: bf16 on CUDA unless fp32; CPU trains in fp32."""
    if dtype not in ("auto", "fp32", "bf16"):
        raise ValueError(f"train.dtype must be auto, fp32 or bf16, got {dtype!r}")
    if device.type == "cuda":
        return None if dtype == "fp32" else torch.bfloat16
    if dtype == "bf16":
        raise ValueError("train.dtype=bf16 needs a CUDA device; CPU training runs in fp32 (train.dtype=auto)")
    return None


__all__ = ["autocast_dtype_for", "build_model"]
