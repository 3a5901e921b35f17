"""Global gradient norm and clipping over any layout: tp / ep / FSDP shards and pipeline stages.

Guarantee: `clip_grad_norm_` returns the same norm (to fp64 summation order, ~1e-12 relative) as
one process holding the whole model, and scales every shard by the same factor. Each gradient's
squared sum is taken over its local shard; shards of one tensor (DTensor `Shard` placements) are
summed over the mesh dimensions they are split on, replicated dimensions count once, and the
disjoint parameters of pipeline stages are summed over `pp_group`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.placement_types import _StridedShard


def _shard_groups(g: torch.Tensor) -> tuple:
    if not isinstance(g, DTensor):
        return ()
    mesh = g.device_mesh
    # FSDP over a dim already split by TP / EP gives _StridedShard, whose is_shard() is False on torch 2.13
    return tuple(mesh.get_group(i) for i, p in enumerate(g.placements)
                 if (p.is_shard() or isinstance(p, _StridedShard)) and mesh.size(i) > 1)


def global_grad_norm(params: Iterable[torch.Tensor], *, pp_group=None) -> torch.Tensor:
    """L2 norm of all gradients of the whole model (fp64 scalar on the gradients' device)."""
    buckets: dict[tuple, torch.Tensor] = {}
    device = None
    for p in params:
        if p.grad is None:
            continue
        g = p.grad
        local = g._local_tensor if isinstance(g, DTensor) else g
        device = local.device
        key = _shard_groups(g)
        sq = local.detach().double().pow(2).sum()
        buckets[key] = buckets[key] + sq if key in buckets else sq
    total = torch.zeros((), dtype=torch.float64, device=device or "cpu")
    for groups, sq in buckets.items():  # same keys in the same order on every rank of a stage
        for group in groups:
            dist.all_reduce(sq, group=group)
        total = total + sq
    if pp_group is not None:
        dist.all_reduce(total, group=pp_group)
    return total.sqrt()


@torch.no_grad()
def clip_grad_norm_(params: Iterable[torch.Tensor], max_norm: float, *, pp_group=None) -> torch.Tensor:
    """Scale gradients so the global norm is at most `max_norm` (<= 0: measure only); return the
    norm before clipping (fp32 scalar, CPU). A non-finite norm is returned and nothing is scaled."""
    params = [p for p in params if p.grad is not None]
    norm = global_grad_norm(params, pp_group=pp_group)
    if max_norm > 0 and torch.isfinite(norm):
        coef = float(max_norm / (norm + 1e-6))
        if coef < 1.0:
            for p in params:
                (p.grad._local_tensor if isinstance(p.grad, DTensor) else p.grad).mul_(coef)
    return norm.float().cpu()


__all__ = ["clip_grad_norm_", "global_grad_norm"]
