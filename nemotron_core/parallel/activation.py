"""Activation checkpointing applied from outside the model, one block at a time.

Each block of `model.layers` recomputes its forward during backward instead of keeping its
activations (torch's non-reentrant checkpoint). Parameter names do not change (the block's
`forward` is wrapped in place, no wrapper module), so checkpoints and HF exports are unaffected.
Loss and gradients are identical to the un-checkpointed model (tested).
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def apply_activation_checkpointing(model: nn.Module) -> int:
    """Checkpoint every block of `model.layers` (training only; cached decoding runs as is).

    Returns the number of blocks wrapped; idempotent.
    """
    wrapped = 0
    layers = model.layers
    for block in layers.values() if isinstance(layers, nn.ModuleDict) else layers:
        if getattr(block, "_activation_checkpointed", False):
            continue
        block.forward = functools.partial(_checkpointed_forward, block.forward)
        block._activation_checkpointed = True
        wrapped += 1
    return wrapped


def _checkpointed_forward(forward, h, info, state=None):
    if state is not None or not torch.is_grad_enabled():
        return forward(h, info) if state is None else forward(h, info, state)
    return checkpoint(forward, h, info, use_reentrant=False)
