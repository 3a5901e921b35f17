"""RMSNorm and the gated, grouped RMSNorm of the Mamba-2 mixer.

Both compute in fp32 and match transformers' `NemotronHRMSNorm` / `NemotronHRMSNormGated`
operation for operation (same casts, same order), so fp32 parity is exact up to summation order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nemotron_core.model.params import local


class RMSNorm(nn.Module):
    """`weight * x / sqrt(mean(x**2) + eps)`, in fp32, cast back to the input dtype."""

    def __init__(self, dim: int, *, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.float() * x).to(dtype)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


class GatedRMSNorm(nn.Module):
    """Mamba-2 output norm: `RMSNorm_per_group(y * silu(z)) * weight` (norm after the gate).

    The last dimension (d_inner) is normalised in independent groups of `group_size` channels
    (d_inner / n_groups), so a tensor-parallel shard holding whole groups normalises locally.
    """

    def __init__(self, dim: int, *, group_size: int, eps: float = 1e-5):
        super().__init__()
        if dim % group_size:
            raise ValueError(f"GatedRMSNorm: dim {dim} is not a multiple of group_size {group_size}")
        self.weight = nn.Parameter(torch.ones(dim))
        self.group_size = group_size
        self.eps = eps

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        dtype = y.dtype
        h = y.float() * F.silu(z.float())
        *prefix, d = h.shape
        h = h.view(*prefix, d // self.group_size, self.group_size)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        h = h.view(*prefix, d)
        return local(self.weight) * h.to(dtype)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
