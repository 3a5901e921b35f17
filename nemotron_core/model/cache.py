"""Inference cache of a Nano3Model: a KV cache per attention layer, conv + SSM state per Mamba layer.

Mamba SSM states are fp32 whatever the model dtype; conv windows and KV use the model dtype.
MoE and MLP layers carry no state.
"""

from __future__ import annotations

import torch

from nemotron_core.model.attention import KVState
from nemotron_core.model.mamba import MambaState


class InferenceCache:
    """Per-layer states for `batch` rows of at most `max_len` tokens (prompt + generated)."""

    def __init__(self, model, batch: int, max_len: int, *, dtype: torch.dtype | None = None, device=None):
        p = next(model.parameters())
        dtype = dtype or p.dtype
        device = device or p.device
        self.max_len = max_len
        self.seen = 0
        self.states: list = []
        for block in model.layers:
            if block.kind == "attention":
                self.states.append(KVState.empty(block.mixer, batch, max_len, dtype=dtype, device=device))
            elif block.kind == "mamba":
                self.states.append(MambaState.empty(block.mixer, batch, dtype=dtype, device=device))
            else:
                self.states.append(None)

    def layer_state(self, i: int):
        return self.states[i]

    def advance(self, n: int) -> None:
        self.seen += n
