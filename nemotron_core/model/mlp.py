"""Dense squared-ReLU MLP: `down(relu(up(x))**2)`; the '-' layers and the MoE shared expert."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def relu2(x: torch.Tensor) -> torch.Tensor:
    """Squared ReLU, the activation of every NemotronH MLP and expert (no gate)."""
    return torch.square(F.relu(x))


class MLP(nn.Module):
    """`down_proj(relu(up_proj(x))**2)`; names match HF (`up_proj`, `down_proj`) for TP plans."""

    def __init__(self, hidden_size: int, intermediate_size: int, *, bias: bool = False):
        super().__init__()
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(relu2(self.up_proj(x)))
